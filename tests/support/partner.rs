//! A real HTTPS partner: rustls (ring) and hyper, HTTP/1.1 and HTTP/2 on one listener, that
//! can demand a client certificate and answers every request with what it saw.
//!
//! The partner runs on its own tokio runtime thread, so it outlives any one test's runtime and
//! works from sync tests too. It stops when dropped.
//!
//! Paths with a meaning:
//! - `/slow?ms=N` answers after N milliseconds (the request is recorded before the wait);
//! - `/download?bytes=N` streams N bytes in 64 KiB chunks; byte `i` is `i % 256`
//!   ([`download_sha256`] gives the expected digest);
//! - `/status/NNN` answers with status NNN (200..=599) and the usual JSON body;
//! - anything else answers 200 with the JSON body, a [`SeenRequest`].
//!
//! Request bodies are read as a stream, counted and hashed, never held whole.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use super::pki::{leaf_facts, sha256_hex, ServerCert};

/// Size of each chunk `/download` sends.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// How long a client may take to finish its handshake before it counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One `/download` chunk: byte `i` is `i % 256`, so every chunk is the same.
static DOWNLOAD_PATTERN: [u8; DOWNLOAD_CHUNK] = {
    let mut pattern = [0; DOWNLOAD_CHUNK];
    let mut i = 0;
    while i < DOWNLOAD_CHUNK {
        pattern[i] = (i % 256) as u8;
        i += 1;
    }
    pattern
};

/// How a partner is set up.
#[derive(Debug, Clone)]
pub struct PartnerOptions {
    /// The certificate the partner presents.
    pub server: ServerCert,
    /// PEM CA certificates. `Some`: a client certificate chaining to one of them is required.
    /// `None`: no client certificate is requested.
    pub client_ca: Option<Vec<u8>>,
}

/// What the partner saw of one request; also the JSON body of its answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenRequest {
    /// The client leaf's subject CN (the whole subject when it has no CN); `None` without a
    /// client certificate.
    pub subject: Option<String>,
    /// The client leaf's issuer CN (the whole issuer when it has no CN).
    pub issuer: Option<String>,
    /// The client leaf's serial: lowercase hex, no colons, no leading zeros.
    pub serial: Option<String>,
    /// Lowercase hex SHA-256 of the client leaf's DER.
    pub fingerprint: Option<String>,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Lowercase names; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    pub body_length: u64,
    /// Lowercase hex SHA-256 of the request body.
    pub body_sha256: String,
    /// `"HTTP/1.1"` or `"HTTP/2.0"`.
    pub http_version: String,
    /// Which TLS connection carried the request: 1 for the first completed handshake, 2 for
    /// the next, and so on. Two requests with the same number shared a connection.
    pub connection: u64,
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The ALPN protocol agreed, e.g. `"h2"`.
    pub alpn: Option<String>,
}

/// A running partner. Stops on drop.
#[derive(Debug)]
pub struct Partner {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct State {
    seen: Mutex<Vec<SeenRequest>>,
    handshakes: AtomicU64,
    failed_handshakes: AtomicU64,
    /// Numbers the connections whose handshake completed, across both listeners.
    connections: AtomicU64,
}

/// The client as one TLS connection showed it.
#[derive(Debug)]
struct ConnectionFacts {
    number: u64,
    subject: Option<String>,
    issuer: Option<String>,
    serial: Option<String>,
    fingerprint: Option<String>,
    sni: Option<String>,
    alpn: Option<String>,
}

impl Partner {
    /// Listens on `127.0.0.1:0` and serves on a runtime thread of its own. It also listens on
    /// `[::1]` with the same port when it can, so `localhost` works where it resolves to `::1`
    /// first.
    pub fn start(options: PartnerOptions) -> Partner {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&options)));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the partner");
        let addr = listener.local_addr().expect("the partner's address");
        let listener_v6 = std::net::TcpListener::bind(("::1", addr.port())).ok();
        let state = Arc::new(State::default());
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("partner")
            .enable_all()
            .build()
            .expect("build the partner runtime");

        let serving = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(format!("partner-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    if let Some(listener) = listener_v6 {
                        let accepting = accept_connections(listener, acceptor.clone(), &serving);
                        tokio::spawn(accepting);
                    }
                    tokio::select! {
                        () = accept_connections(listener, acceptor, &serving) => {}
                        _ = stopped => {}
                    }
                });
                // Connections still open are dropped, not drained.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn the partner thread");

        Partner {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://localhost:{port}{path}`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port())
    }

    /// Every request seen so far, in the order their bodies were read.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().expect("seen lock").clone()
    }

    /// TLS handshakes that completed.
    pub fn handshakes(&self) -> u64 {
        self.state.handshakes.load(Ordering::SeqCst)
    }

    /// TCP connections whose TLS handshake failed or timed out: no client certificate, one the
    /// partner does not trust, a client that does not trust the partner.
    pub fn failed_handshakes(&self) -> u64 {
        self.state.failed_handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The digest of what `/download?bytes=N` sends.
pub fn download_sha256(bytes: u64) -> String {
    let mut hasher = Sha256::new();
    let mut remaining = bytes;
    while remaining > 0 {
        let n = chunk_len(remaining);
        hasher.update(&DOWNLOAD_PATTERN[..n]);
        remaining -= n as u64;
    }
    hex::encode(hasher.finalize())
}

fn chunk_len(remaining: u64) -> usize {
    usize::try_from(remaining).map_or(DOWNLOAD_CHUNK, |n| n.min(DOWNLOAD_CHUNK))
}

fn server_config(options: &PartnerOptions) -> ServerConfig {
    // The crate's dependency tree enables both ring and aws-lc-rs in rustls, so there is no
    // process default provider: name one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match &options.client_ca {
        Some(pem) => builder.with_client_cert_verifier(client_verifier(pem, provider)),
        None => builder.with_no_client_auth(),
    };
    let chain = options
        .server
        .chain_der
        .iter()
        .cloned()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(options.server.key_der.clone()));

    let mut config = builder
        .with_single_cert(chain, key)
        .expect("a usable server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

fn client_verifier(
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(certificate.expect("a PEM client CA"))
            .expect("a usable client CA");
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .expect("a client certificate verifier")
}

/// Serves every connection `listener` accepts. Must be called inside the partner's runtime.
fn accept_connections(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    state: &Arc<State>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    listener
        .set_nonblocking(true)
        .expect("make a partner listener non-blocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("register a listener");
    let state = Arc::clone(state);
    async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_connection(tcp, acceptor.clone(), Arc::clone(&state)));
        }
    }
}

async fn serve_connection(tcp: tokio::net::TcpStream, acceptor: TlsAcceptor, state: Arc<State>) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(_)) | Err(_) => {
            state.failed_handshakes.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    state.handshakes.fetch_add(1, Ordering::SeqCst);
    let number = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let facts = Arc::new(connection_facts(tls.get_ref().1, number));

    let service = hyper::service::service_fn(move |request| {
        answer(request, Arc::clone(&facts), Arc::clone(&state))
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

fn connection_facts(connection: &rustls::ServerConnection, number: u64) -> ConnectionFacts {
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first());
    let facts = leaf.map(|leaf| leaf_facts(leaf));
    ConnectionFacts {
        number,
        subject: facts.as_ref().map(|facts| facts.subject.clone()),
        issuer: facts.as_ref().map(|facts| facts.issuer.clone()),
        serial: facts.map(|facts| facts.serial_hex),
        fingerprint: leaf.map(|leaf| sha256_hex(leaf)),
        sni: connection.server_name().map(str::to_owned),
        alpn: connection
            .alpn_protocol()
            .map(|alpn| String::from_utf8_lossy(alpn).into_owned()),
    }
}

type AnswerBody = UnsyncBoxBody<Bytes, Infallible>;

async fn answer(
    request: Request<Incoming>,
    facts: Arc<ConnectionFacts>,
    state: Arc<State>,
) -> Result<Response<AnswerBody>, hyper::Error> {
    let (head, body) = request.into_parts();
    let path = head
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.to_string());
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in &head.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| *joined = format!("{joined}, {value}"))
            .or_insert_with(|| value.into_owned());
    }

    let (body_length, body_sha256) = consume(body).await?;

    let seen = SeenRequest {
        subject: facts.subject.clone(),
        issuer: facts.issuer.clone(),
        serial: facts.serial.clone(),
        fingerprint: facts.fingerprint.clone(),
        method: head.method.to_string(),
        path: path.clone(),
        headers,
        body_length,
        body_sha256,
        http_version: format!("{:?}", head.version),
        connection: facts.number,
        sni: facts.sni.clone(),
        alpn: facts.alpn.clone(),
    };
    state.seen.lock().expect("seen lock").push(seen.clone());

    let route = head.uri.path();
    if route == "/slow" {
        let ms = query_number(&head.uri, "ms").unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if route == "/download" {
        return Ok(download(query_number(&head.uri, "bytes").unwrap_or(0)));
    }
    let status = route
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .map_or(StatusCode::OK, |code| {
            if code.is_informational() {
                StatusCode::BAD_REQUEST
            } else {
                code
            }
        });
    Ok(json(status, &seen))
}

/// Reads a body to its end, one frame at a time.
async fn consume(mut body: Incoming) -> Result<(u64, String), hyper::Error> {
    let mut hasher = Sha256::new();
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            length += data.len() as u64;
            hasher.update(&data);
        }
    }
    Ok((length, hex::encode(hasher.finalize())))
}

fn query_number(uri: &hyper::Uri, name: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
}

fn json(status: StatusCode, seen: &SeenRequest) -> Response<AnswerBody> {
    let body = serde_json::to_vec(seen).expect("a SeenRequest serialises");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("a valid response")
}

fn download(bytes: u64) -> Response<AnswerBody> {
    let chunks = futures::stream::unfold(bytes, |remaining| async move {
        if remaining == 0 {
            return None;
        }
        let n = chunk_len(remaining);
        let chunk = Bytes::from_static(&DOWNLOAD_PATTERN[..n]);
        Some((
            Ok::<_, Infallible>(Frame::data(chunk)),
            remaining - n as u64,
        ))
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("content-length", bytes)
        .body(StreamBody::new(chunks).boxed_unsync())
        .expect("a valid response")
}
