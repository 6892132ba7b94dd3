//! Stopping and starting the harness' control-plane processes (etcd,
//! kube-apiserver, ...), for the outage tests.
//!
//! kwokctl's binary runtime runs each component as a process whose pid it
//! keeps in `<cluster>/pids/<component>.pid`; kwokctl itself can only stop
//! and start the whole cluster. [`ControlPlane::snapshot`] records each
//! component's command line, working directory and environment, so a
//! component can be stopped (SIGTERM, as a node drain would) and started
//! again as it was, and one that exited meanwhile (kube-controller-manager
//! and kube-scheduler exit when they cannot renew their own leases) can be
//! revived, as a kubelet restarts a static pod. The pid files are kept up
//! to date so that `make e2e-down` still stops everything. Dropping the
//! snapshot revives whatever is not running, so a failed test does not
//! leave the harness broken for the next.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

/// The components, in the order they start.
pub const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
];

/// How one component was started.
#[derive(Debug, Clone)]
struct Component {
    name: String,
    argv: Vec<String>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
}

/// The control plane's components as they run now.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    components: Vec<Component>,
}

/// The kwokctl cluster directory of the harness.
fn cluster_dir() -> PathBuf {
    let state = std::env::var_os("FRESHEN_E2E_STATE")
        .map_or_else(|| crate::repo_root().join(".e2e"), PathBuf::from);
    state.join("kwok/clusters/freshen-e2e")
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) is not running.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s != "Z"))
        })
        .unwrap_or(false)
}

impl ControlPlane {
    /// Records how every component runs now (each must be running).
    pub fn snapshot() -> anyhow::Result<Self> {
        let dir = cluster_dir();
        let mut components = Vec::new();
        for name in COMPONENTS {
            let pid = Self::pid_in(&dir, name)?;
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let argv = split_nul(&std::fs::read(proc.join("cmdline"))?);
            anyhow::ensure!(!argv.is_empty(), "{name} (pid {pid}) has no command line");
            let env = split_nul(&std::fs::read(proc.join("environ"))?)
                .into_iter()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect();
            components.push(Component {
                name: name.to_owned(),
                argv,
                cwd: std::fs::read_link(proc.join("cwd"))?,
                env,
            });
        }
        Ok(Self { dir, components })
    }

    fn pid_in(dir: &std::path::Path, name: &str) -> anyhow::Result<u32> {
        let file = dir.join("pids").join(format!("{name}.pid"));
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {} (is the harness up?)", file.display()))?;
        Ok(text.trim().parse()?)
    }

    fn component(&self, name: &str) -> anyhow::Result<&Component> {
        self.components
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| anyhow::anyhow!("no component {name}"))
    }

    /// Whether component `name` runs.
    pub fn running(&self, name: &str) -> bool {
        Self::pid_in(&self.dir, name).is_ok_and(alive)
    }

    /// Stops component `name`: SIGTERM, and SIGKILL if it has not exited
    /// 5 s later (kube-apiserver stops serving at once but may linger
    /// draining watches); returns once it has exited.
    pub async fn stop(&self, name: &str) -> anyhow::Result<()> {
        self.component(name)?;
        let pid = Self::pid_in(&self.dir, name)?;
        for (signal, grace) in [("-TERM", 5), ("-KILL", 10)] {
            let status = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()?;
            anyhow::ensure!(
                status.success() || !alive(pid),
                "kill {signal} {pid} ({name}) failed"
            );
            let exited = crate::wait_for(
                &format!("{name} (pid {pid}) to exit"),
                Duration::from_secs(grace),
                Duration::from_millis(50),
                || async move { Ok((!alive(pid)).then_some(())) },
            )
            .await;
            if exited.is_ok() {
                return Ok(());
            }
        }
        anyhow::bail!("{name} (pid {pid}) did not exit after SIGKILL")
    }

    /// Starts component `name` as it ran at the snapshot, its output
    /// appended to its kwokctl log.
    pub fn start(&self, name: &str) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt as _;
        let c = self.component(name)?;
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(&c.argv[0])
            .args(&c.argv[1..])
            .current_dir(&c.cwd)
            .env_clear()
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: it outlives this test process, as
            // kwokctl's did.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        std::fs::write(
            self.dir.join("pids").join(format!("{name}.pid")),
            child.id().to_string(),
        )?;
        Ok(())
    }

    /// Starts every component that is not running (in start order), as a
    /// kubelet would restart them; returns their names.
    pub fn revive(&self) -> anyhow::Result<Vec<String>> {
        let mut revived = Vec::new();
        for c in &self.components {
            if !self.running(&c.name) {
                self.start(&c.name)?;
                revived.push(c.name.clone());
            }
        }
        Ok(revived)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.revive();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_on_nul() {
        assert_eq!(
            split_nul(b"/bin/etcd\0--name=a\0--x=\0"),
            vec!["/bin/etcd", "--name=a", "--x="]
        );
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
