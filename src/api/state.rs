//! What every handler can reach: the dispatcher, and nothing else.

use actix::{Addr, Handler, Message};

use super::error::ApiError;
use crate::actors::EngineError;
use crate::actors::dispatcher::Dispatcher;

pub struct AppState {
    pub dispatcher: Addr<Dispatcher>,
}

impl AppState {
    /// Sends `msg` to the dispatcher and maps an engine error to the error
    /// contract; a dispatcher that cannot take it (shutting down) is a 503.
    pub async fn ask<M, R>(&self, msg: M) -> Result<R, ApiError>
    where
        M: Message<Result = Result<R, EngineError>> + Send + 'static,
        R: Send + 'static,
        Dispatcher: Handler<M>,
    {
        match self.dispatcher.send(msg).await {
            Ok(answer) => answer.map_err(ApiError::from),
            Err(_) => Err(EngineError::NoUnitAvailable.into()),
        }
    }

    /// Like [`Self::ask`], for a message that cannot fail.
    pub async fn tell<M>(&self, msg: M) -> Result<M::Result, ApiError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Dispatcher: Handler<M>,
    {
        self.dispatcher
            .send(msg)
            .await
            .map_err(|_| EngineError::NoUnitAvailable.into())
    }
}
