//! The shipped `ec2` provider scripts (`lifecycle-scripts/providers/ec2/`) against a real EC2
//! API server, moto's, through the coordinator's exec provider: `provision` launches from a
//! launch template with holdfast's tags and records each instance; `fence` terminates (or stops)
//! exactly the recorded instance of the fenced host and nothing else; names an agent could make
//! up never reach the API; API errors come back with their message. Needs
//! `scripts/setup/42-ec2.sh` (skipped without it unless HOLDFAST_TEST_STRICT=1).

use std::process::{Command, Stdio};
use std::time::Duration;

use holdfast_coordinator::provider::{
    ExecProvider, FenceRequest, ProviderError, ProvisionRequest, ReplacementProvider,
};
use holdfast_testkit::ec2::{self, Ec2Server};
use holdfast_testkit::{self as kit, KillOnDrop, Scratch};

fn fence_of(node: &str, hostname: &str, address: &str) -> FenceRequest {
    FenceRequest {
        node_id: node.into(),
        hostname: hostname.into(),
        address: address.into(),
        reason: "xid 79: GPU has fallen off the bus".into(),
        incident_id: Some(42),
    }
}

#[tokio::test]
async fn ec2_scripts_provision_and_fence_exactly_their_instances_in_a_real_ec2_api() {
    let Some((moto, aws_bin)) = kit::require(ec2::tools()) else {
        return;
    };
    let dir = Scratch::new("provider-ec2");
    let ec2 = Ec2Server::start(&moto, &aws_bin, &dir);

    // Every `aws` the scripts run goes through a wrapper that logs its arguments: what an agent
    // reported must never show up in an API call.
    let calls = dir.join("aws-calls.log");
    let spy = dir.join("bin");
    kit::write_script(
        &spy,
        "aws",
        &format!(
            "printf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"",
            calls.display(),
            aws_bin.join("aws").display()
        ),
    );
    let path = std::env::var("PATH").unwrap_or_default();
    // This file's only test: the scripts inherit this process's environment.
    let mut env = ec2.env();
    env.extend([
        ("PATH", format!("{}:{path}", spy.display())),
        ("AWS_MAX_ATTEMPTS", "2".into()),
        ("HOLDFAST_EC2_LAUNCH_TEMPLATE", "holdfast-gpu".into()),
    ]);
    for (key, value) in env {
        std::env::set_var(key, value);
    }
    // The record goes next to the scripts, as outside the coordinator's unit.
    std::env::remove_var("STATE_DIRECTORY");
    // The operator's side: a launch template, and an instance holdfast did not launch.
    let image = ec2.launch_template("holdfast-gpu");
    let bystander = ec2.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &image,
        "--count",
        "1",
        "--query",
        "Instances[0].InstanceId",
    ]);

    let provider_dir = kit::provider_scripts(&dir, "ec2");
    let provider = ExecProvider {
        dir: provider_dir.clone(),
        timeout: Duration::from_secs(60),
        attempts: 1,
        retry_delay: Duration::from_millis(100),
    };
    let request = |request_id| ProvisionRequest {
        request_id,
        job_id: "job-1".into(),
        count: 1,
    };

    // Provision: one instance from the template, tagged with the job and the request, recorded.
    let first = provider.provision(request(7)).await.unwrap();
    assert_eq!(first.hosts.len(), 1, "{first:?}");
    let launched = first.hosts[0].clone();
    assert!(launched.starts_with("i-"), "{launched}");
    assert_eq!(ec2.state(&launched), "running");
    assert_eq!(ec2.tag(&launched, "holdfast:job"), "job-1");
    assert_eq!(ec2.tag(&launched, "holdfast:request"), "7");
    let (address, dns) = ec2.names(&launched);
    let record = std::fs::read_to_string(provider_dir.join("ec2-instances")).unwrap();
    assert!(
        record.contains(&format!("{launched} {address} {dns} ")),
        "{record}"
    );
    // A retried request finds what its first attempt launched instead of launching again.
    let again = provider.provision(request(7)).await.unwrap();
    assert_eq!(again.hosts, std::slice::from_ref(&launched));
    let tagged = ec2.aws(&[
        "ec2",
        "describe-instances",
        "--filters",
        "Name=tag:holdfast:request,Values=7",
        "--query",
        "Reservations[].Instances[].InstanceId",
    ]);
    assert_eq!(tagged.split_whitespace().count(), 1, "{tagged}");
    let second = provider.provision(request(8)).await.unwrap().hosts[0].clone();
    assert_ne!(second, launched);

    // Names an agent could report that are not plain host names or addresses are refused before
    // any API call, and so are real hosts that this provider did not launch.
    let (bystander_address, bystander_dns) = ec2.names(&bystander);
    let before = std::fs::read_to_string(&calls).unwrap_or_default();
    let witness = dir.join("pwned");
    let injection = format!("$(touch {})", witness.display());
    let hostile = [
        fence_of("node-x", "*", ""),
        fence_of("node-x", "ip-10-*", ""),
        fence_of("node-x", &injection, ""),
        fence_of("node-x", "a;b", ""),
        fence_of("node-x", "", "10.0.0.1 ; true"),
        fence_of("node-x", "", "*"),
        fence_of("i-*", "", ""),
    ];
    for request in hostile {
        let shown = format!("{request:?}");
        match provider.fence(request).await {
            Err(ProviderError::Failed { status, output, .. }) => {
                assert_eq!(status, "exit code 2", "{shown}: {output}");
                assert!(output.contains("refusing"), "{shown}: {output}");
            }
            other => panic!("{shown} was not refused: {other:?}"),
        }
    }
    let short = bystander_dns.split('.').next().unwrap_or_default();
    match provider
        .fence(fence_of(short, short, &bystander_address))
        .await
    {
        Err(ProviderError::Failed { status, output, .. }) => {
            assert_eq!(status, "exit code 1", "{output}");
            assert!(output.contains("no instance recorded"), "{output}");
        }
        other => panic!("the bystander was fenced: {other:?}"),
    }
    assert!(!witness.exists(), "a host name ran as shell code");
    let after = std::fs::read_to_string(&calls).unwrap_or_default();
    assert_eq!(before, after, "refused fences called the API");
    assert_eq!(ec2.state(&bystander), "running");

    // Fence: exactly the instance recorded for that host is terminated; the others run on. The
    // agent reports the short host name (ip-10-…), the record holds the full DNS name.
    let host = dns.split('.').next().unwrap_or_default().to_string();
    let fenced = provider
        .fence(fence_of("node-a", &host, &address))
        .await
        .unwrap();
    assert!(fenced.contains(&format!("fenced {launched}")), "{fenced}");
    assert!(
        matches!(
            ec2.state(&launched).as_str(),
            "shutting-down" | "terminated"
        ),
        "{}",
        ec2.state(&launched)
    );
    assert_eq!(ec2.state(&second), "running");
    assert_eq!(ec2.state(&bystander), "running");
    let log = std::fs::read_to_string(&calls).unwrap_or_default();
    let terminations: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("terminate-instances") || l.contains("stop-instances"))
        .collect();
    assert_eq!(
        terminations,
        [format!("ec2 terminate-instances --instance-ids {launched} --output text").as_str()]
    );

    // With HOLDFAST_EC2_FENCE=stop the instance is stopped (its disks kept), found by address.
    std::env::set_var("HOLDFAST_EC2_FENCE", "stop");
    let (second_address, _) = ec2.names(&second);
    provider
        .fence(fence_of("node-b", "", &second_address))
        .await
        .unwrap();
    std::env::remove_var("HOLDFAST_EC2_FENCE");
    assert!(
        matches!(ec2.state(&second).as_str(), "stopping" | "stopped"),
        "{}",
        ec2.state(&second)
    );
    assert_eq!(ec2.state(&bystander), "running");

    // An API error fails the call with the API's message.
    std::env::set_var("HOLDFAST_EC2_LAUNCH_TEMPLATE", "no-such-template");
    match provider.provision(request(9)).await {
        Err(ProviderError::Failed { output, .. }) => {
            assert!(
                output.contains("InvalidLaunchTemplateName") && output.contains("no-such-template"),
                "{output}"
            );
        }
        other => panic!("launching from a missing template: {other:?}"),
    }
    std::env::set_var("HOLDFAST_EC2_LAUNCH_TEMPLATE", "holdfast-gpu");

    // Throttling: with the API answering RequestLimitExceeded to the first two launches, the
    // launch is retried with backoff and succeeds; throttled every time, the call fails with
    // the throttling error after the attempts are spent.
    let python = kit::python().expect("python3 for the throttling proxy");
    for (throttled, attempts, succeeds) in [(2, "4", true), (-1, "2", false)] {
        let proxy_port = kit::free_port();
        let seen = dir.join(format!("throttle-{proxy_port}.log"));
        let _proxy = KillOnDrop(
            Command::new(&python)
                .args(["-c", THROTTLING_PROXY])
                .arg(proxy_port.to_string())
                .arg(ec2.endpoint())
                .arg(throttled.to_string())
                .arg(&seen)
                .stdin(Stdio::null())
                .spawn()
                .expect("starting the throttling proxy"),
        );
        kit::wait_for(Duration::from_secs(20), || async {
            std::net::TcpStream::connect(("127.0.0.1", proxy_port))
                .map(drop)
                .map_err(|e| format!("the proxy is not listening yet: {e}"))
        })
        .await;
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{proxy_port}"));
        std::env::set_var("AWS_MAX_ATTEMPTS", attempts);
        let result = provider.provision(request(10 + proxy_port as u64)).await;
        let launches = std::fs::read_to_string(&seen)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == "RunInstances")
            .count();
        match result {
            Ok(got) if succeeds => {
                assert_eq!(got.hosts.len(), 1, "{got:?}");
                assert_eq!(ec2.state(&got.hosts[0]), "running");
                assert_eq!(
                    launches, 3,
                    "two throttled launches, then one that went through"
                );
            }
            Err(ProviderError::Failed { output, .. }) if !succeeds => {
                assert!(output.contains("RequestLimitExceeded"), "{output}");
                assert_eq!(launches, 2, "AWS_MAX_ATTEMPTS=2: {output}");
            }
            other => panic!("throttled {throttled} times: {other:?}"),
        }
    }
    std::env::set_var("AWS_ENDPOINT_URL", ec2.endpoint());
}

/// An HTTP proxy in front of the EC2 server that answers the first N `RunInstances` calls
/// (`argv[3]`, -1 = all) with EC2's throttling error, as AWS does under a request-rate limit,
/// and forwards everything else; it logs each call's action to `argv[4]`.
const THROTTLING_PROXY: &str = r#"
import sys, urllib.parse, urllib.request, urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, upstream, budget, log = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
THROTTLED = (b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
             b'<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>'
             b'</Error></Errors><RequestID>throttled</RequestID></Response>')
class Proxy(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_POST(self):
        global budget
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        action = urllib.parse.parse_qs(body.decode()).get("Action", ["?"])[0]
        with open(log, "a") as f:
            f.write(action + "\n")
        if action == "RunInstances" and budget != 0:
            budget -= 1
            self.send_response(503)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(THROTTLED)))
            self.end_headers()
            self.wfile.write(THROTTLED)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(upstream + self.path, data=body, headers=headers, method="POST")
        try:
            reply = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as e:
            reply = e
        data = reply.read()
        self.send_response(reply.status if hasattr(reply, "status") else reply.code)
        for k, v in reply.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
ThreadingHTTPServer(("127.0.0.1", port), Proxy).serve_forever()
"#;
