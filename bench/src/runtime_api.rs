//! A minimal AWS Lambda Runtime API, in-process, for one function process at
//! a time: it hands out one armed invocation on `GET …/invocation/next` and
//! records when the function posts its response (or an error).
//!
//! Each measured run is a generation. A `next` that finds nothing to hand out
//! (the function asking for its second event) is held until the run ends, so
//! a killed process's connection can never take a later run's event.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

const BASE: &str = "/2018-06-01/runtime/";

/// One event to hand to the next function process.
pub struct Invocation {
    pub request_id: String,
    pub function_arn: String,
    pub event: Bytes,
}

/// How a run ended, as seen by the Runtime API.
#[derive(Debug)]
pub enum Outcome {
    /// `handed_out` is when the event went out on `next` (the end of the
    /// function's init phase); `at` is when its response had fully arrived.
    Response {
        handed_out: Option<Instant>,
        at: Instant,
        body: Bytes,
    },
    InvocationError {
        body: Bytes,
    },
    InitError {
        body: Bytes,
    },
}

#[derive(Default)]
struct Slot {
    generation: u64,
    invocation: Option<Invocation>,
    request_id: String,
    handed_out: Option<Instant>,
    done: Option<oneshot::Sender<Outcome>>,
}

struct Shared {
    slot: Mutex<Slot>,
    generation: watch::Sender<u64>,
}

pub struct RuntimeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    /// Listens on 127.0.0.1 on a free port.
    pub async fn start() -> std::io::Result<RuntimeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            generation: watch::channel(0).0,
        });
        let server = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(RuntimeApi {
            addr,
            shared,
            server,
        })
    }

    /// The value for `AWS_LAMBDA_RUNTIME_API`.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Starts a run: the next `next` gets `inv`; the receiver resolves when
    /// the function answers it (or reports an init error).
    pub fn arm(&self, inv: Invocation) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        let generation = {
            let mut s = lock(&self.shared.slot);
            s.generation += 1;
            s.request_id = inv.request_id.clone();
            s.invocation = Some(inv);
            s.handed_out = None;
            s.done = Some(tx);
            s.generation
        };
        self.shared.generation.send_replace(generation);
        rx
    }

    /// Ends the current run: held `next` calls are released and anything
    /// posted later is ignored.
    pub fn disarm(&self) {
        let generation = {
            let mut s = lock(&self.shared.slot);
            s.generation += 1;
            s.invocation = None;
            s.request_id.clear();
            s.handed_out = None;
            s.done = None;
            s.generation
        };
        self.shared.generation.send_replace(generation);
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(m: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("runtime api: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    r
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let Some(rest) = req.uri().path().strip_prefix(BASE).map(str::to_owned) else {
        return Ok(reply(StatusCode::NOT_FOUND, r#"{"errorType":"NotFound"}"#));
    };
    match (method, rest.as_str()) {
        (Method::GET, "invocation/next") => Ok(next(&shared).await),
        (Method::POST, "init/error") => {
            let body = read_body(req).await;
            complete(&shared, None, Outcome::InitError { body });
            Ok(reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#))
        }
        (Method::POST, path) if path.starts_with("invocation/") => {
            let mut parts = path["invocation/".len()..].splitn(2, '/');
            let id = parts.next().unwrap_or_default().to_owned();
            let kind = parts.next().unwrap_or_default().to_owned();
            if kind != "response" && kind != "error" {
                return Ok(reply(StatusCode::NOT_FOUND, r#"{"errorType":"NotFound"}"#));
            }
            // The response counts as complete once its whole body is here.
            let body = read_body(req).await;
            let outcome = if kind == "response" {
                Outcome::Response {
                    handed_out: None,
                    at: Instant::now(),
                    body,
                }
            } else {
                Outcome::InvocationError { body }
            };
            complete(&shared, Some(&id), outcome);
            Ok(reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#))
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, r#"{"errorType":"NotFound"}"#)),
    }
}

async fn read_body(req: Request<Incoming>) -> Bytes {
    match req.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

fn complete(shared: &Shared, request_id: Option<&str>, outcome: Outcome) {
    let mut s = lock(&shared.slot);
    let matches = request_id.is_none_or(|id| !s.request_id.is_empty() && s.request_id == id);
    if matches {
        let outcome = match outcome {
            Outcome::Response { at, body, .. } => Outcome::Response {
                handed_out: s.handed_out,
                at,
                body,
            },
            other => other,
        };
        if let Some(tx) = s.done.take() {
            let _ = tx.send(outcome);
        }
    }
}

async fn next(shared: &Shared) -> Response<Full<Bytes>> {
    let mut changes = shared.generation.subscribe();
    let asked_at = Instant::now();
    let (generation, invocation) = {
        let mut s = lock(&shared.slot);
        let inv = s.invocation.take();
        if inv.is_some() {
            // The function asked for work: its init phase is over.
            s.handed_out = Some(asked_at);
        }
        (s.generation, inv)
    };
    if let Some(inv) = invocation {
        let deadline_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64 + 30_000)
            .unwrap_or(0);
        let mut r = Response::new(Full::new(inv.event));
        let h = r.headers_mut();
        let put = |h: &mut hyper::HeaderMap, k: &'static str, v: String| {
            if let Ok(v) = v.parse() {
                h.insert(k, v);
            }
        };
        put(h, "content-type", "application/json".into());
        put(h, "lambda-runtime-aws-request-id", inv.request_id);
        put(h, "lambda-runtime-deadline-ms", deadline_ms.to_string());
        put(h, "lambda-runtime-invoked-function-arn", inv.function_arn);
        put(
            h,
            "lambda-runtime-trace-id",
            format!(
                "Root=1-{:08x}-{:024x};Parent={:016x};Sampled=0",
                deadline_ms / 1000,
                generation,
                generation
            ),
        );
        return r;
    }
    // Nothing to hand out: hold the call, as Lambda does between events,
    // until this run is over.
    loop {
        if *changes.borrow_and_update() != generation {
            break;
        }
        if changes.changed().await.is_err() {
            break;
        }
    }
    reply(StatusCode::GONE, r#"{"errorType":"RunOver"}"#)
}
