//! What the load generator sends: an operation mix over orders it created
//! itself (pays need unpaid orders, refunds need paid ones).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Create,
    Pay,
    Refund,
    Get,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Create, Op::Pay, Op::Refund, Op::Get];

    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Pay => "pay",
            Op::Refund => "refund",
            Op::Get => "get",
        }
    }
}

/// Percentages per operation, e.g. `create=70,pay=10,refund=10,get=10`.
#[derive(Debug, Clone)]
pub struct Mix(Vec<(Op, u32)>);

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for item in s.split(',').filter(|i| !i.trim().is_empty()) {
            let (name, pct) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected op=percent"))?;
            let op = Op::ALL
                .into_iter()
                .find(|o| o.name() == name.trim())
                .ok_or_else(|| format!("unknown operation {name:?} (create, pay, refund, get)"))?;
            let pct: u32 = pct
                .trim()
                .parse()
                .map_err(|_| format!("{item:?}: bad percent"))?;
            parts.push((op, pct));
        }
        let total: u32 = parts.iter().map(|(_, p)| p).sum();
        if total != 100 {
            return Err(format!("the mix adds up to {total}%, not 100%"));
        }
        Ok(Mix(parts))
    }
}

impl Mix {
    /// The operation for a ticket in 0..100.
    pub fn pick(&self, ticket: u32) -> Op {
        let mut acc = 0;
        for (op, pct) in &self.0 {
            acc += pct;
            if ticket < acc {
                return *op;
            }
        }
        Op::Create
    }

    /// Whether every request is a create (then nothing needs learning).
    pub fn only_creates(&self) -> bool {
        self.0
            .iter()
            .all(|(op, pct)| *op == Op::Create || *pct == 0)
    }

    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(o, p)| format!("{}={p}", o.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Orders this run created, by what can still be done to them.
pub struct Orders {
    run: String,
    next_key: AtomicU64,
    next_refund: AtomicU64,
    unpaid: Mutex<VecDeque<String>>,
    paid: Mutex<VecDeque<(String, u32)>>,
    known: Mutex<VecDeque<String>>,
}

/// Amount of every order the generator creates; refunds take 1 at a time.
pub const AMOUNT: i64 = 1999;
const KEEP: usize = 100_000;

/// One HTTP request to send.
pub struct Request {
    /// The operation actually sent (a pay with no unpaid order becomes a create).
    pub op: Op,
    pub path: String,
    /// JSON, ready to send.
    pub body: Option<Vec<u8>>,
}

/// The part of a reply the generator learns from.
#[derive(serde::Deserialize)]
struct Reply {
    order_id: Option<String>,
    order: Option<Box<Reply>>,
}

impl Orders {
    pub fn new(run: String) -> Self {
        Self {
            run,
            next_key: AtomicU64::new(0),
            next_refund: AtomicU64::new(0),
            unpaid: Mutex::default(),
            paid: Mutex::default(),
            known: Mutex::default(),
        }
    }

    pub fn request(&self, wanted: Op) -> Request {
        match wanted {
            Op::Pay => {
                if let Some(id) = self.unpaid.lock().unwrap().pop_front() {
                    return Request {
                        op: Op::Pay,
                        body: Some(to_body(
                            &json!({"payment_ref": format!("pay-{id}"), "amount": AMOUNT}),
                        )),
                        path: format!("/v1/orders/{id}/pay"),
                    };
                }
            }
            Op::Refund => {
                let mut paid = self.paid.lock().unwrap();
                if let Some((id, left)) = paid.pop_front() {
                    if left > 1 {
                        paid.push_back((id.clone(), left - 1));
                    }
                    let n = self.next_refund.fetch_add(1, Ordering::Relaxed);
                    return Request {
                        op: Op::Refund,
                        body: Some(to_body(
                            &json!({"refund_id": format!("{}-r{n}", self.run), "amount": 1}),
                        )),
                        path: format!("/v1/orders/{id}/refunds"),
                    };
                }
            }
            Op::Get => {
                let known = self.known.lock().unwrap();
                if !known.is_empty() {
                    let i = rand::random_range(0..known.len());
                    return Request {
                        op: Op::Get,
                        body: None,
                        path: format!("/v1/orders/{}", known[i]),
                    };
                }
            }
            Op::Create => {}
        }
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        // Formatted directly (the run id and numbers need no JSON escaping):
        // the generator's own CPU comes out of what it can measure.
        let body = format!(
            concat!(
                r#"{{"merchant_id":"m-loadgen","out_trade_no":"{run}-{n}","user_id":"u-{user}","#,
                r#""amount":{amount},"currency":"CNY","description":"load test","#,
                r#""sections":{{"items":[{{"sku":"c1","qty":2}}]}}}}"#
            ),
            run = self.run,
            n = n,
            user = n % 10_000,
            amount = AMOUNT
        );
        Request {
            op: Op::Create,
            path: "/v1/orders".into(),
            body: Some(body.into_bytes()),
        }
    }

    /// Learns from a successful reply which orders can be paid or refunded.
    pub fn learn(&self, op: Op, status: u16, body: &[u8]) {
        if !(200..300).contains(&status) || op == Op::Get || op == Op::Refund {
            return;
        }
        let Ok(reply) = serde_json::from_slice::<Reply>(body) else {
            return;
        };
        let Some(id) = reply
            .order_id
            .or_else(|| reply.order.and_then(|o| o.order_id))
        else {
            return;
        };
        let id = id.as_str();
        match op {
            Op::Create => {
                push_bounded(&self.unpaid, id.to_string());
                push_bounded(&self.known, id.to_string());
            }
            Op::Pay => push_bounded(&self.paid, (id.to_string(), AMOUNT as u32)),
            Op::Refund | Op::Get => {}
        }
    }
}

fn to_body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

fn push_bounded<T>(queue: &Mutex<VecDeque<T>>, item: T) {
    let mut q = queue.lock().unwrap();
    if q.len() >= KEEP {
        q.pop_front();
    }
    q.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick() {
        let mix: Mix = "create=70,pay=10,refund=10,get=10".parse().unwrap();
        assert_eq!(mix.pick(0), Op::Create);
        assert_eq!(mix.pick(69), Op::Create);
        assert_eq!(mix.pick(70), Op::Pay);
        assert_eq!(mix.pick(99), Op::Get);
        assert!("create=50".parse::<Mix>().is_err());
        assert!("fly=100".parse::<Mix>().is_err());
    }

    #[test]
    fn a_create_body_is_the_json_it_means() {
        let orders = Orders::new("lg1-2".into());
        orders.request(Op::Create);
        let r = orders.request(Op::Create);
        let body: Value = serde_json::from_slice(&r.body.unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"merchant_id": "m-loadgen", "out_trade_no": "lg1-2-1", "user_id": "u-1",
                   "amount": AMOUNT, "currency": "CNY", "description": "load test",
                   "sections": {"items": [{"sku": "c1", "qty": 2}]}})
        );
        assert!("create=100".parse::<Mix>().unwrap().only_creates());
        assert!(!"create=90,get=10".parse::<Mix>().unwrap().only_creates());
    }

    #[test]
    fn pays_need_created_orders() {
        let orders = Orders::new("t".into());
        assert_eq!(orders.request(Op::Pay).op, Op::Create, "nothing to pay yet");
        orders.learn(Op::Create, 201, br#"{"order_id": "1", "unit": 1}"#);
        let pay = orders.request(Op::Pay);
        assert_eq!((pay.op, pay.path.as_str()), (Op::Pay, "/v1/orders/1/pay"));
        assert_eq!(
            orders.request(Op::Refund).op,
            Op::Create,
            "nothing paid yet"
        );
        orders.learn(Op::Pay, 200, br#"{"order_id": "1"}"#);
        assert_eq!(orders.request(Op::Refund).op, Op::Refund);
    }
}
