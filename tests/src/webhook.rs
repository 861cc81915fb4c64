//! Receivers of JSON POSTs: a webhook receiver that records what the controller sends, and
//! the base of the fake evaluator ([`crate::evaluator`]), which also answers; and an HTTPS
//! receiver with a certificate from a CA generated for the test ([`TestCa`]).

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

/// A certificate authority made for one test, and a server certificate it signed for
/// `localhost` and `127.0.0.1`.
pub struct TestCa {
    /// The CA certificate (PEM): what the client is told to trust (`--ca-file`).
    pub ca_pem: String,
    server_cert: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl TestCa {
    pub fn generate() -> Result<TestCa> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "wasm-canary test CA");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &issuer)?;
        Ok(TestCa {
            ca_pem: ca_cert.pem(),
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
        })
    }

    fn server_config(&self) -> Result<Arc<tokio_rustls::rustls::ServerConfig>> {
        use tokio_rustls::rustls;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.server_cert.clone()], key)?;
        Ok(Arc::new(config))
    }
}

/// One request an [`HttpsReceiver`] got: its headers (lowercase names), raw body, and the
/// status it was answered with.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTPS webhook receiver (a certificate from a [`TestCa`]) that answers 500 to its
/// first `failures` requests and 200 after, recording each.
pub struct HttpsReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Delivery>>>,
    task: JoinHandle<()>,
}

impl HttpsReceiver {
    pub async fn start(ca: &TestCa, failures: usize) -> Result<HttpsReceiver> {
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config()?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received: Arc<Mutex<Vec<Delivery>>> = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, store) = (acceptor.clone(), store.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(n, v)| {
                                    (n.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                                })
                                .collect();
                            let body = req.into_body().collect().await?.to_bytes().to_vec();
                            let status = match store.lock() {
                                Ok(mut all) => {
                                    let status = if all.len() < failures { 500 } else { 200 };
                                    all.push(Delivery {
                                        headers,
                                        body,
                                        status,
                                    });
                                    status
                                }
                                Err(_) => 500,
                            };
                            let mut response = Response::new(Full::new(Bytes::from("ok")));
                            *response.status_mut() =
                                StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(HttpsReceiver {
            addr,
            received,
            task,
        })
    }

    /// `https://localhost:<port>/hook`: the name the certificate is for.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/hook", self.addr.port())
    }

    pub fn received(&self) -> Vec<Delivery> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
