//! A real EC2 API server for the `ec2` provider's tests: moto's server on loopback, looked at and
//! set up out of band with the aws CLI (the same CLI the scripts under test run). Needs
//! `scripts/setup/42-ec2.sh`, which exports `HOLDFAST_MOTO_SERVER` and `HOLDFAST_AWS_BIN`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::KillOnDrop;

/// moto's server and the directory holding `aws`, or what is missing (see [`crate::require`]).
pub fn tools() -> Result<(PathBuf, PathBuf), String> {
    let var = |name: &str| -> Result<PathBuf, String> {
        let path = std::env::var_os(name)
            .map(PathBuf::from)
            .ok_or_else(|| format!("{name} is not set (source scripts/setup/42-ec2.sh)"))?;
        if path.exists() {
            Ok(path)
        } else {
            Err(format!("{name}={} does not exist", path.display()))
        }
    };
    Ok((var("HOLDFAST_MOTO_SERVER")?, var("HOLDFAST_AWS_BIN")?))
}

/// moto's server, killed with the value.
pub struct Ec2Server {
    pub port: u16,
    /// The directory holding `aws` (put it on the PATH of the scripts under test).
    pub aws_bin: PathBuf,
    _server: KillOnDrop,
}

impl Ec2Server {
    /// Starts `moto` on a free loopback port, its log in `dir/moto.log`; returns once it answers.
    pub fn start(moto: &Path, aws_bin: &Path, dir: &Path) -> Ec2Server {
        let port = crate::free_port();
        let log = std::fs::File::create(dir.join("moto.log")).expect("creating moto.log");
        let server = KillOnDrop(
            Command::new(moto)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("moto's log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", moto.display())),
        );
        let ec2 = Ec2Server {
            port,
            aws_bin: aws_bin.to_path_buf(),
            _server: server,
        };
        crate::wait_for_blocking(Duration::from_secs(60), || {
            let ran = ec2.try_aws(&["ec2", "describe-regions"]);
            crate::check(ran.ok(), || {
                format!("moto not answering yet: {}", ran.stderr)
            })
        });
        ec2
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the aws CLI needs to talk to this server: its endpoint, dummy credentials, a region.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }

    fn try_aws(&self, args: &[&str]) -> crate::Ran {
        crate::run(
            Command::new(self.aws_bin.join("aws"))
                .args(args)
                .args(["--output", "text"])
                .envs(self.env())
                .stdin(Stdio::null()),
        )
    }

    /// Runs the aws CLI against this server, straight (not through a test's wrapper); its
    /// trimmed text output. Fails the test on an error.
    pub fn aws(&self, args: &[&str]) -> String {
        let ran = self.try_aws(args);
        assert!(ran.ok(), "aws {}: {}", args.join(" "), ran.stderr);
        ran.stdout.trim().to_string()
    }

    /// The state of instance `id` (`running`, `terminated`, …).
    pub fn state(&self, id: &str) -> String {
        self.instance(id, "State.Name")
    }

    /// The value of tag `key` on instance `id`.
    pub fn tag(&self, id: &str, key: &str) -> String {
        self.instance(id, &format!("Tags[?Key=='{key}'].Value[]"))
    }

    /// (private address, private DNS name) of instance `id`.
    pub fn names(&self, id: &str) -> (String, String) {
        let out = self.instance(id, "[PrivateIpAddress,PrivateDnsName]");
        let mut fields = out.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some(ip), Some(dns)) => (ip.to_string(), dns.to_string()),
            _ => panic!("instance {id} has no private address and name: {out:?}"),
        }
    }

    fn instance(&self, id: &str, field: &str) -> String {
        self.aws(&[
            "ec2",
            "describe-instances",
            "--instance-ids",
            id,
            "--query",
            &format!("Reservations[].Instances[].{field}"),
        ])
    }

    /// Creates launch template `name` from one of the server's images; returns the image id.
    pub fn launch_template(&self, name: &str) -> String {
        let image = self.aws(&[
            "ec2",
            "describe-images",
            "--owners",
            "amazon",
            "--query",
            "Images[0].ImageId",
        ]);
        self.aws(&[
            "ec2",
            "create-launch-template",
            "--launch-template-name",
            name,
            "--launch-template-data",
            &format!(r#"{{"ImageId":"{image}","InstanceType":"p5.48xlarge"}}"#),
        ]);
        image
    }
}

/// The agents of booted instances, by instance id.
pub type Booted = Arc<Mutex<BTreeMap<String, Child>>>;

/// Boots every instance the ec2 provider's record (`record`) lists that has not booted yet,
/// until `stop`: starts its agent with the instance's host name (a UTS namespace of its own)
/// and private address, as the launch template's user data would. Run it on a thread.
pub fn boot_recorded(
    exe: PathBuf,
    dir: PathBuf,
    coordinator: String,
    record: PathBuf,
    booted: Booted,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, address, dns, ..] = fields[..] else {
                continue;
            };
            let mut booted = booted.lock().unwrap_or_else(|e| e.into_inner());
            if booted.contains_key(id) {
                continue;
            }
            let host = dns.split('.').next().unwrap_or(dns);
            let log =
                std::fs::File::create(dir.join(format!("{id}.log"))).expect("the agent's log");
            let agent = Command::new("unshare")
                .args(["--uts", "sh", "-c"])
                .arg(
                    "hostname \"$1\" && exec \"$2\" agent --coordinator \"$3\" \
                     --advertise-address \"$4\" --state-dir \"$5/nodes/$1\"",
                )
                .args(["agent", host])
                .arg(&exe)
                .args([coordinator.as_str(), address])
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("the agent's log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("booting {id}: {e}"));
            booted.insert(id.to_string(), agent);
        }
        std::thread::sleep(crate::wait::POLL);
    }
}

/// An [`Ec2Server`] serving as the exec provider of a coordinator started next from this
/// process, with instances "booted" (their agents started) as the provider launches them.
pub struct Ec2Provider {
    /// The shipped ec2 scripts' directory.
    pub dir: PathBuf,
    /// The coordinator config that uses them (for `--config`).
    pub config: String,
    /// `PATH` before (the scripts' aws CLI comes first now).
    pub path_before: String,
    booted: Booted,
    stop: Arc<AtomicBool>,
    booter: Option<std::thread::JoinHandle<()>>,
}

impl Ec2Provider {
    /// The shipped scripts in `dir/provider` with launch template `holdfast-gpu`, this process's
    /// environment pointed at `ec2` (the coordinator and its scripts inherit it).
    pub fn install(ec2: &Ec2Server, aws_bin: &Path, dir: &Path) -> Ec2Provider {
        ec2.launch_template("holdfast-gpu");
        let provider = crate::provider_scripts(dir, "ec2");
        let path_before = std::env::var("PATH").unwrap_or_default();
        let mut env = ec2.env();
        env.extend([
            ("PATH", format!("{}:{path_before}", aws_bin.display())),
            ("HOLDFAST_EC2_LAUNCH_TEMPLATE", "holdfast-gpu".into()),
        ]);
        for (key, value) in env {
            std::env::set_var(key, value);
        }
        std::env::remove_var("STATE_DIRECTORY");
        let config = crate::exec_provider_config(dir, &provider, 60000);
        Ec2Provider {
            dir: provider,
            config,
            path_before,
            booted: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            booter: None,
        }
    }

    /// Launches the first host as an operator would (an instance of the template, added to the
    /// provider's record) and starts booting every recorded instance's agent against
    /// `coordinator`; the instance id, its private address and DNS name.
    pub fn launch_first(
        &mut self,
        ec2: &Ec2Server,
        exe: &Path,
        dir: &Path,
        coordinator: &str,
    ) -> (String, String, String) {
        let first = ec2.aws(&[
            "ec2",
            "run-instances",
            "--launch-template",
            "LaunchTemplateName=holdfast-gpu",
            "--query",
            "Instances[0].InstanceId",
        ]);
        let (address, dns) = ec2.names(&first);
        let record = self.dir.join("ec2-instances");
        std::fs::write(&record, format!("{first} {address} {dns} job= request=\n"))
            .expect("the instance record");
        let (exe, dir, addr) = (
            exe.to_path_buf(),
            dir.to_path_buf(),
            coordinator.to_string(),
        );
        let (booted, stop) = (self.booted.clone(), self.stop.clone());
        self.booter = Some(std::thread::spawn(move || {
            boot_recorded(exe, dir, addr, record, booted, stop)
        }));
        (first, address, dns)
    }

    /// Starts a coordinator whose provider is this one, launches the first host
    /// ([`Ec2Provider::launch_first`]) and waits for its agent: the cluster, the first
    /// instance's id, its private address and its host name (what its agent reports).
    pub async fn start_cluster(
        &mut self,
        ec2: &Ec2Server,
        exe: &Path,
        dir: &Path,
    ) -> (holdfast_cli::demo::LocalCluster, String, String, String) {
        let cluster =
            holdfast_cli::demo::LocalCluster::start(exe, dir, &["--config", &self.config])
                .await
                .expect("the coordinator starts");
        let (first, address, dns) = self.launch_first(ec2, exe, dir, &cluster.addr);
        cluster
            .wait_ready(1, Duration::from_secs(30))
            .await
            .expect("the first instance's agent is ready");
        let host = dns.split('.').next().unwrap_or_default().to_string();
        (cluster, first, address, host)
    }

    /// The host of instance `id` loses power: its agent dies (and is not booted again).
    pub fn kill_agent(&self, id: &str) {
        if let Some(agent) = self
            .booted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// Stops booting, kills every booted agent and returns the ids of the instances booted.
    pub fn shut_down(&mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(booter) = self.booter.take() {
            let _ = booter.join();
        }
        let mut booted = self.booted.lock().unwrap_or_else(|e| e.into_inner());
        for agent in booted.values_mut() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        booted.keys().cloned().collect()
    }
}
