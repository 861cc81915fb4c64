//! Receivers of JSON POSTs: a webhook receiver that records what the controller sends, and
//! the base of the fake evaluator ([`crate::evaluator`]), which also answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How a [`JsonReceiver`] answers a body it recorded: status, body, and a pause before.
pub type Responder = Arc<dyn Fn(&Value) -> (u16, Vec<u8>, Duration) + Send + Sync>;

/// Records every JSON body POSTed to it (on arrival) and answers as its responder says.
pub struct JsonReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
}

impl JsonReceiver {
    pub async fn start(respond: Responder) -> Result<JsonReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        let respond = respond.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let value = serde_json::from_slice::<Value>(&body).ok();
                            if let (Some(value), Ok(mut all)) = (&value, store.lock()) {
                                all.push(value.clone());
                            }
                            let (status, body, pause) = respond(&value.unwrap_or(Value::Null));
                            tokio::time::sleep(pause).await;
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() =
                                StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(JsonReceiver {
            addr,
            received,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn received(&self) -> Vec<Value> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for JsonReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A webhook receiver: records the JSON bodies POSTed to it, answers `ok`.
pub struct WebhookReceiver(JsonReceiver);

impl WebhookReceiver {
    pub async fn start() -> Result<WebhookReceiver> {
        let ok: Responder = Arc::new(|_| (200, b"ok".to_vec(), Duration::ZERO));
        Ok(WebhookReceiver(JsonReceiver::start(ok).await?))
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.0.addr())
    }

    pub fn received(&self) -> Vec<Value> {
        self.0.received()
    }
}
