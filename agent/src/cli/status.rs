//! `edge-agent status`: asks the running agent over its status socket, or
//! reads the store read-only when no agent answers (and says so), and
//! prints a table or the JSON document.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::status::{collect, Status, StatusError, StatusObject};
use crate::store::Store;

/// Asks the running agent on `socket`; if nothing listens, reads the store
/// at `db` read-only and reports `running: false`.
pub fn query(socket: &Path, db: &Path, device: Option<&str>) -> Result<Status, StatusError> {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(mut stream) => {
            let read_err = |message: String| StatusError::Read {
                path: socket.to_path_buf(),
                message,
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| read_err(e.to_string()))?;
            let mut text = String::new();
            stream
                .read_to_string(&mut text)
                .map_err(|e| read_err(e.to_string()))?;
            serde_json::from_str(text.trim()).map_err(|e| read_err(format!("{e}: {text:?}")))
        }
        Err(_) => {
            let store = Store::open_read_only(db)?;
            let device = match device {
                Some(d) => d.to_string(),
                None => store.meta("device")?.unwrap_or_default(),
            };
            Ok(collect(&device, &store, false, false)?)
        }
    }
}

/// Human-readable status: a header and a table of objects.
pub fn render(status: &Status) -> String {
    let mut out = format!(
        "device {}  agent {}  link {}\napplied generation {}{}  outbox {}\n",
        status.device,
        if status.running {
            "running"
        } else {
            "NOT RUNNING"
        },
        status.link,
        status.applied_generation,
        if status.applied_hash.is_empty() {
            String::new()
        } else {
            format!(" ({})", status.applied_hash)
        },
        status.outbox_depth,
    );
    if status.objects.is_empty() {
        out.push_str("no objects\n");
        return out;
    }
    let width = |f: &dyn Fn(&StatusObject) -> usize, title: &str| {
        status
            .objects
            .iter()
            .map(f)
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let wn = width(&|o| o.name.len(), "NAME");
    let wk = width(&|o| o.kind.len(), "KIND");
    let wp = width(&|o| o.phase.as_str().len(), "PHASE");
    out.push_str(&format!(
        "{:wn$}  {:wk$}  {:wp$}  {:>8}  {:>4}  MESSAGE\n",
        "NAME", "KIND", "PHASE", "RESTARTS", "GEN"
    ));
    for o in &status.objects {
        out.push_str(&format!(
            "{:wn$}  {:wk$}  {:wp$}  {:>8}  {:>4}  {}\n",
            o.name,
            o.kind,
            o.phase.as_str(),
            o.restarts,
            o.generation,
            o.message
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectRecord;
    use mecvisor_protocol::Phase;

    #[test]
    fn store_fallback_reports_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("agent.db");
        {
            let mut store = Store::open(&db, 100).unwrap();
            store.set_meta("device", "edge-1").unwrap();
            store
                .replace_objects(&[ObjectRecord {
                    name: "cam".into(),
                    kind: "container".into(),
                    phase: Phase::Unsupported,
                    state: "unsupported".into(),
                    message: "no container runtime on this agent yet".into(),
                    restarts: 0,
                    generation: 1,
                    spec: vec![],
                }])
                .unwrap();
        }
        let status = query(&dir.path().join("agent.sock"), &db, None).unwrap();
        assert_eq!(status.device, "edge-1");
        assert!(!status.running);
        assert_eq!(status.link, "disconnected");
        assert_eq!(status.objects[0].phase, Phase::Unsupported);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["objects"][0]["phase"], "unsupported");
        for key in [
            "device",
            "link",
            "running",
            "applied_generation",
            "applied_hash",
            "outbox_depth",
            "objects",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        let table = render(&status);
        assert!(table.contains("NOT RUNNING"), "{table}");
        assert!(table.contains("cam"), "{table}");
    }

    #[test]
    fn missing_store_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = query(
            &dir.path().join("agent.sock"),
            &dir.path().join("agent.db"),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, StatusError::Store(_)), "{err}");
    }
}
