//! The async-std listener runs the same hub and session as the tokio one.

#![cfg(feature = "async-std")]

use std::net::SocketAddr;
use std::time::Duration;

use async_std::net::TcpStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use cnerium_core::{Event, Timestamp};
use cnerium_realtime::{Hub, RealtimeConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(5);

async fn next_message<S>(client: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, async_tungstenite::tungstenite::Error>> + Unpin,
{
    async_std::future::timeout(DEADLINE, client.next())
        .await
        .expect("no message in time")
        .expect("connection ended")
        .expect("read failed")
}

fn text_json(message: Message) -> Value {
    serde_json::from_str(message.to_text().unwrap()).unwrap()
}

#[test]
fn async_std_listener_serves_rooms_events_and_shutdown() {
    async_std::task::block_on(async {
        let hub = Hub::new(RealtimeConfig::default());
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener = cnerium_realtime::async_std::Listener::bind(addr, hub.clone())
            .await
            .unwrap();
        let addr = listener.local_addr();
        let (stop, stopped) = futures_channel::oneshot::channel::<()>();
        let server = async_std::task::spawn(listener.run_until(async {
            let _ = stopped.await;
        }));

        let stream = TcpStream::connect(addr).await.unwrap();
        let url = format!("ws://{addr}/ws?room=orders");
        let (mut client, _) = async_tungstenite::client_async(url, stream).await.unwrap();
        assert_eq!(
            text_json(next_message(&mut client).await),
            json!({"type": "room.joined", "payload": {"room": "orders"}})
        );

        let event =
            Event::new("order.created", Some("orders".into()), 1, Timestamp::EPOCH).unwrap();
        assert_eq!(hub.publish_event(&event), 1);
        let received = text_json(next_message(&mut client).await);
        assert_eq!(
            received,
            serde_json::from_str::<Value>(&event.to_envelope()).unwrap()
        );

        stop.send(()).unwrap();
        match next_message(&mut client).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected a close frame, got {other:?}"),
        }
        async_std::future::timeout(DEADLINE, server)
            .await
            .expect("listener did not stop");
        assert_eq!(hub.connection_count(), 0);
    });
}

#[test]
fn async_std_listener_answers_a_plain_get_with_426_and_keeps_serving() {
    use futures_util::{AsyncReadExt, AsyncWriteExt};

    async_std::task::block_on(async {
        let hub = Hub::new(RealtimeConfig::default());
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener = cnerium_realtime::async_std::Listener::bind(addr, hub.clone())
            .await
            .unwrap();
        let addr = listener.local_addr();
        let (stop, stopped) = futures_channel::oneshot::channel::<()>();
        let server = async_std::task::spawn(listener.run_until(async {
            let _ = stopped.await;
        }));

        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        async_std::future::timeout(DEADLINE, plain.read_to_string(&mut answer))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
        let answer = answer.to_ascii_lowercase();
        assert!(answer.contains("\r\nupgrade: websocket\r\n"), "{answer}");
        assert!(
            answer.contains("\r\ncontent-type: application/problem+json\r\n"),
            "{answer}"
        );

        let stream = TcpStream::connect(addr).await.unwrap();
        let url = format!("ws://{addr}/ws?room=orders");
        let (mut client, _) = async_tungstenite::client_async(url, stream).await.unwrap();
        assert_eq!(
            text_json(next_message(&mut client).await),
            json!({"type": "room.joined", "payload": {"room": "orders"}})
        );

        drop(client);
        stop.send(()).unwrap();
        async_std::future::timeout(DEADLINE, server)
            .await
            .expect("listener did not stop");
    });
}
