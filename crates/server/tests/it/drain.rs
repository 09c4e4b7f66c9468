//! The probes (`/livez`, `/readyz`) and the graceful drain: unready at once, new
//! WebSockets refused, open ones closed with 1001 in waves spread over `drain_period`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use livequery_server::drain::WAVES;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::{TestServer, test_config};

#[tokio::test]
async fn livez_and_readyz_answer_on_both_ports() {
    let server = TestServer::start("").await;
    let (status, body) = server.http("GET", "/livez", None, None).await.unwrap();
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = server.http("GET", "/readyz", None, None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["draining"], false);
    assert_eq!(body["problems"], json!({}));
    // /health is unchanged.
    let (status, body) = server.http("GET", "/health", None, None).await.unwrap();
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
}

#[tokio::test]
async fn readyz_lists_component_problems_and_a_disconnected_source() {
    use livequery_server::identity::memory::MemoryIdentities;
    use livequery_server::{Components, Server};

    let components = Components::embedded(Arc::new(MemoryIdentities::new()));
    let readiness = components.readiness.clone();
    let server = TestServer::start_components("", components, true).await;
    readiness.set_problem(
        "parse_server",
        "403 from parse-server: check the master key",
    );
    let (status, body) = server.http("GET", "/readyz", None, None).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(
        body["problems"],
        json!({"parse_server": "403 from parse-server: check the master key"})
    );
    // Liveness does not depend on readiness.
    let (status, _) = server.http("GET", "/livez", None, None).await.unwrap();
    assert_eq!(status, 200);
    readiness.clear_problem("parse_server");
    let (status, _) = server.http("GET", "/readyz", None, None).await.unwrap();
    assert_eq!(status, 200);
    drop(server);

    // A source that never connects: unready, with the source named as the problem; both
    // ports answer the probes.
    let components = Components::embedded(Arc::new(MemoryIdentities::new()));
    let never = Arc::new(NeverConnects);
    let components = Components {
        source: never,
        ..components
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let config = test_config(&["[server]\nadmin_listen = \"127.0.0.1:1\""]);
    let server = TestServer {
        addr: listener.local_addr().unwrap(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        handle: None,
    };
    let run = Server::new(Arc::new(config), listener, components)
        .with_admin_listener(admin)
        .run(server.shutdown.clone());
    let handle = tokio::spawn(run);
    let admin_server = TestServer {
        addr: admin_addr,
        shutdown: server.shutdown.clone(),
        handle: Some(handle),
    };
    for probe in [&server, &admin_server] {
        let (status, body) = retry(|| probe.http("GET", "/readyz", None, None)).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["sourceConnected"], false);
        assert!(
            body["problems"]["source"]
                .as_str()
                .is_some_and(|p| p.contains("not connected")),
            "{body}"
        );
        let (status, _) = retry(|| probe.http("GET", "/livez", None, None)).await;
        assert_eq!(status, 200);
    }
    admin_server.stop().await;
}

/// A source that never connects (and ends when told to).
struct NeverConnects;

#[async_trait::async_trait]
impl livequery_server::source::Source for NeverConnects {
    fn name(&self) -> &'static str {
        "never"
    }

    async fn run(
        self: Arc<Self>,
        _ingest: livequery_server::ingest::Ingest,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        shutdown.cancelled().await;
        Ok(())
    }
}

async fn retry<F, Fut>(mut request: F) -> (u16, Value)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u16, Value)>>,
{
    for _ in 0..100 {
        if let Ok(reply) = request().await {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no answer");
}

#[tokio::test]
async fn drain_turns_unready_at_once_and_closes_sockets_in_waves_over_the_period() {
    const PERIOD: Duration = Duration::from_secs(3);
    let clients = 2 * WAVES;
    let server = TestServer::start("[server]\ndrain_period = \"3s\"").await;
    let mut open = Vec::new();
    for _ in 0..clients {
        open.push(server.connected(None).await);
    }
    let (status, _) = server.http("GET", "/readyz", None, None).await.unwrap();
    assert_eq!(status, 200);

    let start = Instant::now();
    server.shutdown.cancel();
    // Each client records when its close frame arrived, and its code.
    let closes: Vec<_> = open
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let code = client.closed().await;
                (code, start.elapsed())
            })
        })
        .collect();

    // Unready at once (well before the first wave), while still serving HTTP.
    let (status, body) = server.http("GET", "/readyz", None, None).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        (&body["status"], &body["draining"]),
        (&json!("draining"), &json!(true))
    );
    assert!(start.elapsed() < PERIOD / 10, "readyz answered late");
    let (status, _) = server.http("GET", "/livez", None, None).await.unwrap();
    assert_eq!(status, 200);
    // New WebSockets are sent elsewhere.
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    match tokio_tungstenite::client_async(format!("ws://{}/", server.addr), stream).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a new WebSocket during the drain: {other:?}"),
    }

    let mut times = Vec::new();
    for (i, close) in closes.into_iter().enumerate() {
        let (code, at) = close.await.unwrap();
        assert_eq!(code, Some(1001), "client {i}");
        times.push(at);
    }
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    // Nothing closed in the first tenth of the period (the load balancer's time to notice),
    // and the closes spread over most of it rather than all at once.
    assert!(first >= PERIOD / 12, "first close after {first:?}");
    assert!(
        last - first >= PERIOD / 2,
        "closes span only {:?}: {times:?}",
        last - first
    );
    assert!(last < PERIOD + Duration::from_secs(5), "{times:?}");
    // Client i is in wave i % WAVES: waves three apart close in order.
    for i in 0..clients {
        for j in 0..clients {
            if i % WAVES + 3 <= j % WAVES {
                assert!(times[i] < times[j], "wave order: {times:?}");
            }
        }
    }
    let handle = {
        let mut server = server;
        server.handle.take().unwrap()
    };
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the server stops after the drain")
        .unwrap()
        .unwrap();
}
