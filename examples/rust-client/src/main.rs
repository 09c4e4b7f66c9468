//! A minimal LiveQuery client: connect, subscribe to one query, print every frame.
//!
//! ```text
//! cargo run -p livequery-example-client -- --url ws://127.0.0.1:1337 \
//!     --class Message --where '{"room":"lobby"}'
//! ```
//! It speaks the protocol through `livequery-protocol`'s typed frames, answers pings (the
//! WebSocket layer does), and exits after `--count` events or on close.

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use livequery_protocol::{
    ClientMessage, ConnectRequest, QuerySpec, RequestId, ServerFrame, SubscribeRequest,
};
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(about = "Subscribe to a Parse LiveQuery and print its events")]
struct Args {
    /// The LiveQuery server (`ws://host:port[/path]`).
    #[arg(long, default_value = "ws://127.0.0.1:1337")]
    url: String,
    /// Parse application id.
    #[arg(long, default_value = "myAppId")]
    app_id: String,
    /// JavaScript key, when the server checks keys.
    #[arg(long)]
    javascript_key: Option<String>,
    /// Session token of the user to subscribe as.
    #[arg(long)]
    session_token: Option<String>,
    /// Class to watch.
    #[arg(long, default_value = "Message")]
    class: String,
    /// Parse `where` clause as JSON.
    #[arg(long = "where", default_value = "{}")]
    where_: String,
    /// Exit after this many events (0: never).
    #[arg(long, default_value_t = 0)]
    count: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Value::Object(where_) =
        serde_json::from_str::<Value>(&args.where_).context("--where is not JSON")?
    else {
        bail!("--where must be a JSON object");
    };
    let authority = args
        .url
        .strip_prefix("ws://")
        .context("only ws:// URLs are supported by this example")?;
    let host = authority.split('/').next().unwrap_or(authority);
    let stream = TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let (mut ws, _) = tokio_tungstenite::client_async(args.url.as_str(), stream)
        .await
        .context("WebSocket handshake")?;

    let connect = ClientMessage::Connect(ConnectRequest {
        application_id: args.app_id,
        javascript_key: args.javascript_key,
        session_token: args.session_token,
        ..ConnectRequest::default()
    });
    ws.send(Message::Text(connect.encode().into())).await?;
    let subscribe = ClientMessage::Subscribe(SubscribeRequest {
        request_id: RequestId::from(1),
        query: QuerySpec {
            class_name: args.class.into(),
            where_: Map::from_iter(where_),
            keys: None,
            watch: None,
        },
        session_token: None,
    });
    ws.send(Message::Text(subscribe.encode().into())).await?;

    let mut events = 0;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        match ServerFrame::decode(&text)? {
            ServerFrame::Connected { client_id, .. } => println!("connected as {client_id}"),
            ServerFrame::Subscribed { request_id, .. } => println!("subscribed ({request_id})"),
            ServerFrame::Event {
                op,
                object,
                original,
                ..
            } => {
                let id = object
                    .get("objectId")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                println!("{} {id} {}", op.as_str(), Value::Object(object.clone()));
                if let Some(original) = original {
                    println!("  original {}", Value::Object(original));
                }
                events += 1;
                if args.count > 0 && events >= args.count {
                    ws.close(None).await?;
                    break;
                }
            }
            ServerFrame::Error { error, code, .. } => eprintln!("error {code}: {error}"),
            other => println!("{other:?}"),
        }
    }
    Ok(())
}
