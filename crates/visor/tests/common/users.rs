//! Users for end-to-end tests: a client certificate of their own from the cluster CA, a
//! kubeconfig for it, and kubectl run as them.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;
use visor::kubeconfig::Kubeconfig;

use super::TestServer;

/// A user with a client certificate of their own (user `name`, the given groups).
pub struct CertUser {
    pub kubeconfig: PathBuf,
    cache: TempDir,
    _dir: TempDir,
}

impl CertUser {
    pub fn new(server: &TestServer, name: &str, groups: &[&str]) -> CertUser {
        let pki = visor_apiserver::pki::Pki::load_or_create(server.data_dir(), &[]).unwrap();
        let (cert, key) = pki.issue_client_cert(name, groups).unwrap();
        CertUser::with_certificate(server, name, pki.ca_pem(), &cert, &key)
    }

    /// A user holding a certificate issued some other way (a host's, from `POST /join`).
    pub fn with_certificate(
        server: &TestServer,
        name: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> CertUser {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join(format!("{name}.kubeconfig"));
        let url = format!("https://127.0.0.1:{}", server.port);
        Kubeconfig::admin(&url, ca_pem, cert_pem, key_pem)
            .write(&kubeconfig)
            .unwrap();
        CertUser {
            kubeconfig,
            cache: tempfile::tempdir().unwrap(),
            _dir: dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .arg("--request-timeout=30s")
            .args(args)
            .env_remove("KUBECONFIG");
        command
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl")
    }

    /// kubectl with `input` on its standard input.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `kubectl auth can-i ARGS`: "yes" or "no".
    pub fn can_i(&self, args: &[&str]) -> String {
        let mut all = vec!["auth", "can-i"];
        all.extend(args);
        String::from_utf8_lossy(&self.kubectl(&all).stdout)
            .trim()
            .to_string()
    }
}
