//! The audit log: who did what, one JSON line per request in `DATA_DIR/audit/audit.log`, in
//! upstream's `audit.k8s.io/v1` Event shape at the `Metadata` level (user, groups,
//! impersonated user, verb, object reference, response code, times, request URI, source
//! address — never a request or response body).
//!
//! Requests only queue their event ([`AuditLog::record`]); a writer thread appends and
//! rotates by size: when a line would take `audit.log` past the limit it becomes
//! `audit.log.1` (the older ones shift up, the oldest beyond the number kept is deleted).
//! [`AuditLog::close`] at shutdown lets the writer drain the queue, so no event of an answered
//! request is lost on a clean stop.
//!
//! Credentials never reach the log: the URI's query parameters that could carry one
//! (`token`, `access_token`, `password`) are replaced with `REDACTED`, and headers are not
//! recorded at all.

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::rbac::Attributes;

/// Default size at which the log rotates.
pub const DEFAULT_MAX_SIZE: u64 = 100 * 1024 * 1024;
/// Default number of rotated files kept.
pub const DEFAULT_MAX_FILES: usize = 5;
const FILE_NAME: &str = "audit.log";
/// How long the writer gathers events before writing them out: requests queue their events
/// without waking it one by one.
const GATHER: Duration = Duration::from_millis(10);
const SECRET_PARAMETERS: &[&str] = &["token", "access_token", "password"];

/// Where and how much to keep.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub max_size: u64,
    pub max_files: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

/// One request, as the audit log records it.
#[derive(Clone, Debug, Default)]
pub struct AuditEvent {
    pub audit_id: String,
    pub received: String,
    pub method: String,
    pub request_uri: String,
    pub source_ip: Option<String>,
    pub user: Option<(String, Vec<String>)>,
    pub impersonated: Option<(String, Vec<String>)>,
    pub attributes: Option<Attributes>,
    pub code: u16,
    pub user_agent: Option<String>,
}

impl AuditEvent {
    /// An event for a request as received: its URI (secrets removed), method, address and
    /// attributes. The caller fills in who asked and the response code.
    pub fn begin<B>(request: &http::Request<B>) -> AuditEvent {
        let uri = request.uri();
        let attributes = Attributes::from_request(request.method(), uri.path(), uri.query());
        AuditEvent {
            audit_id: uuid::Uuid::new_v4().to_string(),
            received: jiff::Timestamp::now().to_string(),
            method: request.method().to_string(),
            request_uri: redact_uri(uri.path(), uri.query()),
            source_ip: crate::auth::client_ip(request).map(|ip| ip.to_string()),
            attributes: Some(attributes),
            user_agent: request
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            ..AuditEvent::default()
        }
    }

    /// The event as upstream's `audit.k8s.io/v1` Event, ready to serialise.
    fn line<'a>(&'a self) -> EventLine<'a> {
        let user = |(username, groups): &'a (String, Vec<String>)| UserLine {
            username,
            groups: groups.iter().map(String::as_str).collect(),
        };
        let verb = match &self.attributes {
            Some(a) => Cow::Borrowed(a.verb.as_str()),
            None => Cow::Owned(self.method.to_ascii_lowercase()),
        };
        let non_empty = |s: &'a String| Some(s.as_str()).filter(|s| !s.is_empty());
        EventLine {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: "Metadata",
            audit_id: &self.audit_id,
            stage: "ResponseComplete",
            request_uri: &self.request_uri,
            verb,
            user: self.user.as_ref().map(user).unwrap_or_else(|| UserLine {
                username: "system:anonymous",
                groups: vec!["system:unauthenticated"],
            }),
            source_ips: self.source_ip.iter().map(String::as_str).collect(),
            response_status: ResponseStatus { code: self.code },
            request_received_timestamp: &self.received,
            stage_timestamp: jiff::Timestamp::now().to_string(),
            user_agent: self.user_agent.as_deref(),
            impersonated_user: self.impersonated.as_ref().map(user),
            object_ref: self
                .attributes
                .as_ref()
                .filter(|a| a.resource_request)
                .map(|a| ObjectRef {
                    resource: &a.resource,
                    namespace: non_empty(&a.namespace),
                    name: non_empty(&a.name),
                    api_group: non_empty(&a.api_group),
                    subresource: non_empty(&a.subresource),
                }),
        }
    }
}

/// An audit log line: upstream's Event at the `Metadata` level.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventLine<'a> {
    kind: &'static str,
    api_version: &'static str,
    level: &'static str,
    #[serde(rename = "auditID")]
    audit_id: &'a str,
    stage: &'static str,
    #[serde(rename = "requestURI")]
    request_uri: &'a str,
    verb: Cow<'a, str>,
    user: UserLine<'a>,
    #[serde(rename = "sourceIPs")]
    source_ips: Vec<&'a str>,
    response_status: ResponseStatus,
    request_received_timestamp: &'a str,
    stage_timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated_user: Option<UserLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_ref: Option<ObjectRef<'a>>,
}

#[derive(Serialize)]
struct UserLine<'a> {
    username: &'a str,
    groups: Vec<&'a str>,
}

#[derive(Serialize)]
struct ResponseStatus {
    code: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef<'a> {
    resource: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subresource: Option<&'a str>,
}

/// A request URI with the values of credential-like query parameters replaced.
pub fn redact_uri(path: &str, query: Option<&str>) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return path.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            if SECRET_PARAMETERS
                .iter()
                .any(|secret| key.eq_ignore_ascii_case(secret))
            {
                format!("{key}=REDACTED")
            } else {
                pair.to_string()
            }
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// The audit log's queue and writer; see the module documentation.
pub struct AuditLog {
    queue: RwLock<Option<Sender<AuditEvent>>>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (creating) `DATA_DIR/audit/` and starts the writer thread.
    pub fn open(data_dir: &Path, config: &AuditConfig) -> anyhow::Result<AuditLog> {
        let dir = data_dir.join("audit");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let file = open_append(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            path: path.clone(),
            file: BufWriter::new(file),
            size,
            max_size: config.max_size.max(1024),
            max_files: config.max_files,
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .context("starting the audit writer")?;
        Ok(AuditLog {
            queue: RwLock::new(Some(tx)),
            writer: std::sync::Mutex::new(Some(thread)),
            path,
        })
    }

    /// Queues an event; never blocks on the disk.
    pub fn record(&self, event: AuditEvent) {
        if let Some(queue) = self
            .queue
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = queue.send(event);
        }
    }

    /// Stops taking events and waits until every queued one is written.
    pub fn close(&self) {
        self.queue.write().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the audit writer panicked");
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

struct Writer {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    max_size: u64,
    max_files: usize,
}

impl Writer {
    fn run(mut self, events: Receiver<AuditEvent>) {
        // Block for one event, let more gather, then write them all before flushing once.
        while let Ok(first) = events.recv() {
            self.write(&first);
            std::thread::sleep(GATHER);
            while let Ok(next) = events.try_recv() {
                self.write(&next);
            }
            if let Err(e) = self.file.flush() {
                tracing::error!(error = %e, "writing the audit log");
            }
        }
        if let Err(e) = self
            .file
            .flush()
            .and_then(|()| self.file.get_ref().sync_all())
        {
            tracing::error!(error = %e, "closing the audit log");
        }
    }

    fn write(&mut self, event: &AuditEvent) {
        let mut line = serde_json::to_vec(&event.line()).expect("JSON serialises");
        line.push(b'\n');
        if self.size > 0
            && self.size + line.len() as u64 > self.max_size
            && let Err(e) = self.rotate()
        {
            tracing::error!(error = %format!("{e:#}"), "rotating the audit log");
        }
        match self.file.write_all(&line) {
            Ok(()) => self.size += line.len() as u64,
            Err(e) => tracing::error!(error = %e, "writing the audit log"),
        }
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        self.file.flush()?;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.max_files == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let _ = fs::remove_file(numbered(self.max_files));
            for n in (1..self.max_files).rev() {
                if numbered(n).exists() {
                    fs::rename(numbered(n), numbered(n + 1))?;
                }
            }
            fs::rename(&self.path, numbered(1))?;
        }
        self.file = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            audit_id: format!("id-{i}"),
            request_uri: format!("/api/v1/namespaces/default/pods/p{i}"),
            user: Some(("alice".into(), vec!["devs".into()])),
            attributes: Some(Attributes::resource(
                "get",
                "",
                "pods",
                "default",
                &format!("p{i}"),
            )),
            code: 200,
            ..AuditEvent::default()
        }
    }

    #[test]
    fn every_event_is_written_and_files_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(
            dir.path(),
            &AuditConfig {
                max_size: 4096,
                max_files: 3,
            },
        )
        .unwrap();
        for i in 0..200 {
            log.record(event(i));
        }
        log.close();
        let audit = dir.path().join("audit");
        let mut ids = Vec::new();
        for name in ["audit.log.3", "audit.log.2", "audit.log.1", "audit.log"] {
            let text = fs::read_to_string(audit.join(name)).unwrap();
            assert!(text.len() <= 4096, "{name} is {} bytes", text.len());
            for line in text.lines() {
                let value: Value = serde_json::from_str(line).unwrap();
                assert_eq!(value["user"]["username"], "alice");
                assert_eq!(value["objectRef"]["resource"], "pods");
                ids.push(value["auditID"].as_str().unwrap().to_string());
            }
        }
        assert!(!audit.join("audit.log.4").exists());
        // The newest events survive, in order, with none missing at the end.
        assert_eq!(ids.last().unwrap(), "id-199");
        let first: usize = ids[0].trim_start_matches("id-").parse().unwrap();
        let expected: Vec<String> = (first..200).map(|i| format!("id-{i}")).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn an_event_line_has_upstreams_field_names() {
        let mut resource = event(1);
        resource.impersonated = Some(("bob".into(), vec![]));
        resource.user_agent = Some("kubectl/v1.32".into());
        resource.source_ip = Some("127.0.0.1".into());
        let line: Value = serde_json::to_value(resource.line()).unwrap();
        assert_eq!(line["auditID"], "id-1");
        assert_eq!(line["requestURI"], "/api/v1/namespaces/default/pods/p1");
        assert_eq!(line["verb"], "get");
        assert_eq!(line["sourceIPs"], serde_json::json!(["127.0.0.1"]));
        assert_eq!(line["responseStatus"]["code"], 200);
        assert_eq!(line["impersonatedUser"]["username"], "bob");
        assert_eq!(line["userAgent"], "kubectl/v1.32");
        assert_eq!(
            line["objectRef"],
            serde_json::json!({"resource": "pods", "namespace": "default", "name": "p1"})
        );
        let anonymous = AuditEvent {
            method: "GET".into(),
            request_uri: "/version".into(),
            code: 200,
            ..AuditEvent::default()
        };
        let line: Value = serde_json::to_value(anonymous.line()).unwrap();
        assert_eq!(line["verb"], "get");
        assert_eq!(line["user"]["username"], "system:anonymous");
        for absent in ["objectRef", "impersonatedUser", "userAgent"] {
            assert!(line.get(absent).is_none(), "{absent} in {line}");
        }
    }

    #[test]
    fn credentials_in_query_strings_are_redacted() {
        assert_eq!(
            redact_uri("/x", Some("watch=1&token=abc&Password=p")),
            "/x?watch=1&token=REDACTED&Password=REDACTED"
        );
        assert_eq!(redact_uri("/x", None), "/x");
    }
}
