//! The transport seam: how a message of a local peer reaches its target, and
//! what the sender does with each kind of answer (`exec::Transport::deliver`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use peerfs::error::Error;
use peerfs::exec::{Config, Core};
use peerfs::exec::{Delivery, DeliveryAck, InProcess, MessageKind, Transport};
use peerfs::store::Message;
use serde_json::Value;

fn uid() -> u32 {
    unsafe { libc::getuid() }
}

fn core(dir: &std::path::Path, delivery_tries: u32) -> Core {
    let mut cfg = Config::new(dir);
    cfg.runners = 2;
    cfg.delivery_tries = delivery_tries;
    Core::start(cfg).unwrap()
}

/// How the test transport answers a refused delivery.
type Answer = fn(Error) -> Delivery;

/// Answers the first `refusals` deliveries with `answer`, then delivers in
/// process; records the kind of every message it was handed.
struct Refusing {
    local: InProcess,
    answer: Answer,
    refusals: u32,
    calls: AtomicU32,
    kinds: Mutex<Vec<MessageKind>>,
}

impl Refusing {
    fn new(c: &Core, answer: Answer, refusals: u32) -> Arc<Refusing> {
        Arc::new(Refusing {
            local: InProcess::new(c),
            answer,
            refusals,
            calls: AtomicU32::new(0),
            kinds: Mutex::new(Vec::new()),
        })
    }
}

impl Transport for Refusing {
    fn deliver(&self, from: &str, msg: Message, ack: DeliveryAck) {
        self.kinds
            .lock()
            .unwrap()
            .push(MessageKind::of(&msg).unwrap());
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.refusals {
            return ack((self.answer)(Error::new(
                libc::EIO,
                "refused by the test transport",
            )));
        }
        self.local.deliver(from, msg, ack)
    }
}

/// Peers alice and bob whose messages go through a [`Refusing`] transport.
fn alice_and_bob(
    dir: &std::path::Path,
    delivery_tries: u32,
    answer: Answer,
    refusals: u32,
) -> (Core, Arc<Refusing>) {
    let c = core(dir, delivery_tries);
    c.create_peer("alice", uid(), 0).unwrap();
    c.create_peer("bob", uid(), 0).unwrap();
    let t = Refusing::new(&c, answer, refusals);
    c.set_transport(t.clone());
    (c, t)
}

/// Runs a script at alice that sends one to bob; the sent script's result.
fn sent_result(c: &Core) -> Value {
    c.run("alice", "s.rhai", r#"send("bob", "6 * 7"); 1"#)
        .unwrap();
    serde_json::from_slice(&c.wait_result("alice", "bob", "s-1.json").unwrap()).unwrap()
}

#[test]
fn a_way_down_is_retried_without_counting_against_delivery_tries() {
    let d = tempfile::tempdir().unwrap();
    let (c, t) = alice_and_bob(d.path(), 1, Delivery::WayDown, 3);
    let r = sent_result(&c);
    // bob ran it (and, without a policy, denied it): the message got there.
    assert_eq!(r["status"], "denied", "{r}");
    assert_eq!(r["target"], "bob", "{r}");
    assert!(
        !r["error"].as_str().unwrap().contains("cannot deliver"),
        "{r}"
    );
    let kinds = t.kinds.lock().unwrap().clone();
    assert!(t.calls.load(Ordering::SeqCst) >= 5, "{kinds:?}");
    assert_eq!(kinds[..4], [MessageKind::Script; 4]);
    assert_eq!(kinds.last(), Some(&MessageKind::Result));
    c.shutdown();
}

/// A refusal is counted (an error result after `delivery_tries`); no such peer
/// anywhere ends the message at once, however many tries are allowed.
#[test]
fn refusals_and_unknown_peers_end_as_error_results() {
    let cases: [(u32, Answer, u32, &str); 2] = [
        (2, Delivery::Refused, 2, "refused"),
        (1000, Delivery::NoSuchPeer, 1, "no such peer"),
    ];
    for (tries, answer, calls, what) in cases {
        let d = tempfile::tempdir().unwrap();
        let (c, t) = alice_and_bob(d.path(), tries, answer, u32::MAX);
        let r = sent_result(&c);
        assert_eq!(r["status"], "error", "{r}");
        let why = r["error"].as_str().unwrap();
        assert!(why.contains("cannot deliver s-1.rhai to bob"), "{r}");
        assert!(why.contains("refused by the test transport"), "{r}");
        assert_eq!(t.calls.load(Ordering::SeqCst), calls, "{what}");
        c.shutdown();
    }
}

#[test]
fn message_kinds_read_as_they_are_stored() {
    for k in [MessageKind::Script, MessageKind::Result] {
        assert_eq!(k.as_str().parse::<MessageKind>().unwrap(), k);
    }
    let e = "job".parse::<MessageKind>().unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
}
