//! A real EC2 API server for the `ec2` provider's tests: moto's server on loopback, looked at and
//! set up out of band with the aws CLI (the same CLI the scripts under test run). Needs
//! `scripts/setup/42-ec2.sh`, which exports `HOLDFAST_MOTO_SERVER` and `HOLDFAST_AWS_BIN`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
