//! Change events as consumers see them (schema version 1:
//! `docs/events.schema.json`, explained in `docs/events.md`): what changed
//! in an order, as a flattened diff of the order's JSON.
//!
//! A path names one place in the order: object keys joined with `.`,
//! array elements as `[i]` (`sections.items[1].qty`); a key that is empty
//! or holds `.`, `[`, `]` or `"` is written as a JSON string in brackets
//! (`sections["a.b"]`). A change's `old` is left out when the place did not
//! exist and `new` when it no longer does, so `null` always means a JSON
//! `null`. Objects are compared key by key and arrays of the same length
//! element by element; anything else that differs (an array that grew, an
//! object that became a number) is one change of the whole value, and so
//! is a value whose changes inside would take much more room than it
//! (`WHOLE_AFTER`). So applying a diff's changes in order to the old
//! order gives the new one ([`apply`]).

use serde::Serialize;
use serde_json::{Value, json};

use super::order::{Order, Refund};
use super::timestamp;
use super::values::Sections;

/// The version of the event schema the engine writes.
pub const SCHEMA_VERSION: u32 = 1;

/// One changed place of an order.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FieldChange {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

/// The order as an event shows it: the fields of the API's order, with
/// every section.
pub fn order_view(order: &Order) -> Value {
    serde_json::to_value(OrderView::of(order)).expect("an order is JSON")
}

/// [`order_view`], borrowed from the order and serialized straight to
/// JSON (a relay renders thousands a second).
#[derive(Serialize)]
pub struct OrderView<'a> {
    order_id: String,
    unit: u16,
    merchant_id: &'a str,
    out_trade_no: &'a str,
    user_id: &'a str,
    amount: i64,
    currency: &'a str,
    description: Option<&'a str>,
    status: &'static str,
    paid_amount: i64,
    refunded_amount: i64,
    payment_ref: Option<&'a str>,
    version: i64,
    created_at: String,
    updated_at: String,
    sections: &'a Sections,
    /// Filled by refund events' changes (`refunds.<refund_id>`).
    refunds: NoRefunds,
}

/// `{}`.
#[derive(Serialize)]
struct NoRefunds {}

impl<'a> OrderView<'a> {
    pub fn of(order: &'a Order) -> Self {
        Self {
            order_id: order.id.to_string(),
            unit: order.id.unit(),
            merchant_id: order.merchant_id.as_str(),
            out_trade_no: order.out_trade_no.as_str(),
            user_id: order.user_id.as_str(),
            amount: order.amount.get(),
            currency: order.currency.as_str(),
            description: order.description.as_ref().map(|d| d.as_str()),
            status: order.status.as_str(),
            paid_amount: order.paid_amount,
            refunded_amount: order.refunded_amount,
            payment_ref: order.payment_ref.as_ref().map(|p| p.as_str()),
            version: order.version,
            created_at: timestamp(order.created_at_ms),
            updated_at: timestamp(order.updated_at_ms),
            sections: &order.sections,
            refunds: NoRefunds {},
        }
    }
}

/// An `order.created` event: the envelope every event has, and the order
/// as its create made it (`order`: pass [`Order::as_created`]).
#[derive(Serialize)]
pub struct CreatedEvent<'a> {
    schema_version: u32,
    pub event_id: String,
    pub order_id: String,
    unit: u16,
    version: i64,
    #[serde(rename = "type")]
    event_type: &'static str,
    occurred_at: String,
    order: OrderView<'a>,
}

impl<'a> CreatedEvent<'a> {
    pub fn new(unit: u16, created: &'a Order) -> Self {
        let order_id = created.id.to_string();
        Self {
            schema_version: SCHEMA_VERSION,
            event_id: format!("{order_id}.1"),
            order_id,
            unit,
            version: 1,
            event_type: "order.created",
            occurred_at: timestamp(created.created_at_ms),
            order: OrderView::of(created),
        }
    }
}

/// What a change did to an order: the diff of its views.
pub fn order_changes(before: &Order, after: &Order) -> Vec<FieldChange> {
    diff(&order_view(before), &order_view(after))
}

/// A new refund, as a change at `refunds.<refund_id>`.
pub fn refund_added(refund: &Refund) -> FieldChange {
    let mut path = String::from("refunds");
    push_key(&mut path, refund.refund_id.as_str());
    FieldChange {
        path,
        old: None,
        new: Some(json!({
            "refund_id": refund.refund_id.as_str(),
            "amount": refund.amount.get(),
            "reason": refund.reason.as_ref().map(|r| r.as_str()),
            "created_at": timestamp(refund.created_at_ms),
        })),
    }
}

/// How much more room (bytes of JSON) the changes inside a value may take
/// than one change of the whole value, old and new, before they are
/// replaced by that one change. Element by element, a 64 KiB array of
/// small numbers rewritten would be ~1.5 MB of paths, over a broker's
/// message limit (NATS: 1 MB by default), and its relay would retry it
/// for good; whole, it is twice the array.
const WHOLE_AFTER: usize = 1024;

/// What changed from `old` to `new`, in path order.
pub fn diff(old: &Value, new: &Value) -> Vec<FieldChange> {
    diff_within(old, new, WHOLE_AFTER)
}

fn diff_within(old: &Value, new: &Value, whole_after: usize) -> Vec<FieldChange> {
    let mut out = Vec::new();
    diff_at(
        &mut String::new(),
        Some(old),
        Some(new),
        whole_after,
        &mut out,
    );
    out
}

fn diff_at(
    path: &mut String,
    old: Option<&Value>,
    new: Option<&Value>,
    whole_after: usize,
    out: &mut Vec<FieldChange>,
) {
    let first = out.len();
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let len = path.len();
                push_key(path, key);
                diff_at(path, a.get(key), b.get(key), whole_after, out);
                path.truncate(len);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                diff_at(path, Some(x), Some(y), whole_after, out);
                path.truncate(len);
            }
        }
        (old, new) if old != new => {
            out.push(FieldChange {
                path: path.clone(),
                old: old.cloned(),
                new: new.cloned(),
            });
            return;
        }
        _ => return,
    }
    // The order itself (the empty path) is never changed whole.
    if path.is_empty() || out.len() - first < 2 {
        return;
    }
    let inside: usize = out[first..]
        .iter()
        .map(|c| change_len(&c.path, c.old.as_ref(), c.new.as_ref()))
        .sum();
    if inside > change_len(path, old, new) + whole_after {
        out.truncate(first);
        out.push(FieldChange {
            path: path.clone(),
            old: old.cloned(),
            new: new.cloned(),
        });
    }
}

/// About how long a change is as JSON: `{"path":..,"old":..,"new":..}`.
fn change_len(path: &str, old: Option<&Value>, new: Option<&Value>) -> usize {
    24 + path.len() + old.map_or(0, json_len) + new.map_or(0, json_len)
}

/// How long `value` is as JSON (counted, not written).
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("a JSON value serializes");
    count.0
}

fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty() && !key.contains(['.', '[', ']', '"']);
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&serde_json::to_string(key).expect("a string serializes"));
        path.push(']');
    }
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The steps of a path [`diff`] wrote (`None`: not one it could write).
fn steps(path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            if after.starts_with('"') {
                let mut de = serde_json::Deserializer::from_str(after).into_iter::<String>();
                let key = de.next()?.ok()?;
                let used = de.byte_offset();
                steps.push(Step::Key(key));
                rest = after[used..].strip_prefix(']')?;
            } else {
                let (index, tail) = after.split_once(']')?;
                steps.push(Step::Index(index.parse().ok()?));
                rest = tail;
            }
        } else {
            let body = rest.strip_prefix('.').unwrap_or(rest);
            let end = body.find(['.', '[']).unwrap_or(body.len());
            steps.push(Step::Key(body[..end].to_owned()));
            rest = &body[end..];
        }
        if let Some(tail) = rest.strip_prefix('.')
            && tail.starts_with('[')
        {
            return None; // `.[` is never written
        }
    }
    Some(steps)
}

/// Applies `changes` to `target` in order (what a consumer does to keep an
/// order's state from its events). A change whose path does not lead to a
/// place in `target` is an error naming it.
pub fn apply(target: &mut Value, changes: &[FieldChange]) -> Result<(), String> {
    for c in changes {
        let steps = steps(&c.path).ok_or_else(|| format!("unreadable path {:?}", c.path))?;
        let Some((last, parents)) = steps.split_last() else {
            match &c.new {
                Some(v) => *target = v.clone(),
                None => return Err("the whole order cannot be removed".into()),
            }
            continue;
        };
        let mut at = &mut *target;
        for step in parents {
            at = match (step, at) {
                (Step::Key(k), Value::Object(m)) => m.get_mut(k),
                (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
                _ => None,
            }
            .ok_or_else(|| format!("no place {:?} in the order", c.path))?;
        }
        match (last, at, &c.new) {
            (Step::Key(k), Value::Object(m), Some(v)) => {
                m.insert(k.clone(), v.clone());
            }
            (Step::Key(k), Value::Object(m), None) => {
                m.remove(k);
            }
            (Step::Index(i), Value::Array(a), Some(v)) if *i < a.len() => a[*i] = v.clone(),
            _ => return Err(format!("no place {:?} in the order", c.path)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn paths_are_flattened_and_read_back() {
        let old = json!({"status": "created", "sections": {"items": [{"qty": 1}, {"qty": 2}],
                         "shipping": {"city": "Shenzhen"}, "a.b": 1, "gone": [1]}});
        let new = json!({"status": "paid", "sections": {"items": [{"qty": 1}, {"qty": 3}],
                         "shipping": {"city": "Guangzhou", "floor": null}, "a.b": 2}});
        let changes = diff(&old, &new);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                r#"sections["a.b"]"#,
                "sections.gone",
                "sections.items[1].qty",
                "sections.shipping.city",
                "sections.shipping.floor",
                "status"
            ]
        );
        assert_eq!(changes[1].new, None, "removed: no `new`");
        assert_eq!(changes[4].old, None, "added: no `old`");
        assert_eq!(changes[4].new, Some(Value::Null), "a JSON null is kept");
        let mut rebuilt = old.clone();
        apply(&mut rebuilt, &changes).unwrap();
        assert_eq!(rebuilt, new);
        assert_eq!(
            steps("a[2].b").unwrap(),
            [Step::Key("a".into()), Step::Index(2), Step::Key("b".into())]
        );
        assert!(steps("a.[2]").is_none());
        let mut other = json!({"x": 1});
        assert!(apply(&mut other, &changes).is_err());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..3).prop_map(|n| json!(n)),
            "[a-c.\\[\\]\"]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c.\\[\\]\"]{0,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn a_value_rewritten_throughout_is_one_change() {
        // A section of 30,000 zeros made ones (a body under 64 KiB): one
        // change of the whole array, not 30,000 of ~46 bytes each.
        let old = json!({"sections": {"a": vec![0; 30_000], "b": 1}, "version": 1});
        let new = json!({"sections": {"a": vec![1; 30_000], "b": 1}, "version": 2});
        let changes = diff(&old, &new);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["sections.a", "version"]);
        let len = serde_json::to_string(&changes).unwrap().len();
        assert!(len < 2 * 60_000 + 200, "{len} bytes");
        let mut rebuilt = old.clone();
        apply(&mut rebuilt, &changes).unwrap();
        assert_eq!(rebuilt, new);

        // A few elements of a long array stay elements.
        let mut some = old.clone();
        some["sections"]["a"][7] = json!(1);
        some["sections"]["a"][29_999] = json!(2);
        let paths: Vec<String> = diff(&old, &some).into_iter().map(|c| c.path).collect();
        assert_eq!(paths, ["sections.a[7]", "sections.a[29999]"]);
    }

    proptest! {
        /// Applying the diff of two objects to the first gives the second,
        /// whatever their keys hold, and whether or not values are changed
        /// whole.
        #[test]
        fn a_diff_rebuilds_the_new_value(a in json_value(), b in json_value()) {
            let (a, b) = (json!({"o": a}), json!({"o": b}));
            for whole_after in [WHOLE_AFTER, 0] {
                let mut rebuilt = a.clone();
                apply(&mut rebuilt, &diff_within(&a, &b, whole_after)).unwrap();
                prop_assert_eq!(&rebuilt, &b);
                prop_assert!(diff_within(&a, &a, whole_after).is_empty());
            }
        }
    }
}
