//! The network-namespace test hosts themselves: hosts reach each other, a cut host is unreachable
//! until healed, killing a host's processes leaves none, and dropping the lab deletes every
//! namespace it made — also when the test panics. Needs root (skipped otherwise unless
//! HOLDFAST_TEST_STRICT=1).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use holdfast_testkit::netns::{self, Lab};
use holdfast_testkit::{self as kit};

fn available() -> bool {
    kit::require(netns::available().map_err(|why| format!("network namespaces: {why}"))).is_some()
}

fn namespaces() -> String {
    kit::run(std::process::Command::new("ip").args(["netns", "list"])).stdout
}

/// Whether `from` can open a TCP connection to `to` within `within`.
fn connects(lab: &Lab, from: &str, to: SocketAddr, within: Duration) -> bool {
    let _inside = lab.enter(from).unwrap();
    TcpStream::connect_timeout(&to, within).is_ok()
}

#[test]
fn hosts_talk_get_cut_off_healed_killed_and_torn_down() {
    if !available() {
        return;
    }
    let mut lab = Lab::create().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    assert_ne!(a.addr, b.addr);
    assert!(
        lab.add_host("a").is_err(),
        "a duplicate host name is refused"
    );
    assert!(lab.add_host("bad name").is_err());

    // A listener on b, bound inside b's namespace.
    let to = SocketAddr::new(b.addr.into(), 7000);
    let listener = {
        let _inside = lab.enter("b").unwrap();
        TcpListener::bind(to).unwrap()
    };
    std::thread::spawn(move || for _ in listener.incoming() {});
    assert!(
        connects(&lab, "a", to, Duration::from_secs(2)),
        "a cannot reach b"
    );

    lab.cut("b").unwrap();
    assert!(
        !connects(&lab, "a", to, Duration::from_millis(500)),
        "b is reachable while cut off"
    );
    lab.heal("b").unwrap();
    kit::wait_for_blocking(Duration::from_secs(5), || {
        kit::check(connects(&lab, "a", to, Duration::from_millis(500)), || {
            "b is unreachable after healing".into()
        })
    });

    // Everything running on a host dies with it, stopped processes included.
    let mut sleeper = lab
        .command("a", "sleep")
        .unwrap()
        .arg("300")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let on_a = kit::wait_for_blocking(Duration::from_secs(5), || {
        let pids = lab.pids("a").unwrap();
        kit::check(!pids.is_empty(), || {
            "the process never showed up on a".into()
        })
        .map(|()| pids)
    });
    for pid in on_a {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
    }
    assert!(lab.kill_processes("a").unwrap() >= 1);
    assert!(sleeper.wait().is_ok());
    assert!(lab.pids("a").unwrap().is_empty());

    let netns = a.netns.clone();
    assert!(namespaces().contains(&netns));
    let panicked = std::thread::spawn(move || {
        let _lab = lab;
        panic!("a failing test");
    })
    .join();
    assert!(panicked.is_err());
    assert!(
        !namespaces().contains(&netns),
        "the lab's namespaces outlived it"
    );
}
