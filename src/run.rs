//! `run`: the container entrypoint. Mounts, waits until the mount answers, starts the app
//! with the same stdio, forwards signals to it, and when it exits unmounts and exits with its
//! status. Works as PID 1: orphaned processes are reaped.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use crate::mount::{self, MountConfig, MountError, Mounted};
use crate::user::AppUser;

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub mount: MountConfig,
    /// The app and its arguments.
    pub command: Vec<OsString>,
    /// Who the app runs as (None: as the daemon).
    pub app_user: Option<AppUser>,
    /// Created once the mount answers, removed at unmount (for other container tooling).
    pub ready_file: Option<PathBuf>,
    /// How long the mount may take to answer a `stat` of its root.
    pub ready_timeout: Duration,
    /// After SIGTERM, how long the app has before it is killed.
    pub grace_period: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{0} received before the app started; nothing was started")]
    Interrupted(&'static str),
    #[error("the mount at {path} did not answer within {secs} s: {why}")]
    NotReady {
        path: String,
        secs: u64,
        why: String,
    },
    #[error("cannot start {app}: {why}")]
    Spawn { app: String, why: String },
    #[error("{0}")]
    Io(String),
}

/// Runs the app under the mount; returns the exit code to exit with: the app's, or 128 +
/// the signal that ended it.
pub async fn run(cfg: RunConfig) -> Result<u8, RunError> {
    // Signals are caught from the start: before the app runs they stop the start-up.
    let io = |e: std::io::Error| RunError::Io(format!("installing signal handlers: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    let mut hup = signal(SignalKind::hangup()).map_err(io)?;
    let mut chld = signal(SignalKind::child()).map_err(io)?;

    let prepared = tokio::select! {
        p = mount::prepare(cfg.mount.clone()) => p?,
        _ = term.recv() => return Err(RunError::Interrupted("SIGTERM")),
        _ = int.recv() => return Err(RunError::Interrupted("SIGINT")),
    };
    let mut mounted = prepared.attach().await?;
    if let Err(e) = wait_ready(&mounted.mountpoint, cfg.ready_timeout).await {
        let _ = mounted.unmount().await;
        return Err(e);
    }
    if let Some(f) = &cfg.ready_file
        && let Err(e) = std::fs::write(f, b"ready\n")
    {
        tracing::warn!(file = %f.display(), error = %e, "cannot create the ready file");
    }

    // Orphans of the app become our children (as they would if we were PID 1), so they are
    // reaped here and none is left as a zombie.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let status = match spawn(&cfg.command, cfg.app_user.as_ref()) {
        Ok(pid) => {
            tracing::info!(pid, app = %command_line(&cfg.command), "app started");
            supervise(pid, &cfg, &mut term, &mut int, &mut hup, &mut chld).await
        }
        Err(e) => Err(e),
    };
    finish(&mut mounted, cfg.ready_file.as_deref()).await;
    status
}

async fn finish(mounted: &mut Mounted, ready_file: Option<&Path>) {
    if let Some(f) = ready_file {
        let _ = std::fs::remove_file(f);
    }
    if let Err(e) = mounted.unmount().await {
        tracing::error!(error = %crate::util::chain(&e), "unmount failed");
    }
}

/// Waits until a `stat` of the mount's root succeeds (from a blocking thread: it goes
/// through our own FUSE server).
async fn wait_ready(mountpoint: &Path, timeout: Duration) -> Result<(), RunError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mp = mountpoint.to_path_buf();
        match tokio::task::spawn_blocking(move || std::fs::metadata(&mp)).await {
            Ok(Ok(m)) if m.is_dir() => return Ok(()),
            Ok(Ok(_)) => last = "not a directory".into(),
            Ok(Err(e)) => last = e.to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(RunError::NotReady {
        path: mountpoint.display().to_string(),
        secs: timeout.as_secs(),
        why: last,
    })
}

fn command_line(cmd: &[OsString]) -> String {
    cmd.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn spawn(cmd: &[OsString], user: Option<&AppUser>) -> Result<i32, RunError> {
    let (app, args) = cmd.split_first().ok_or_else(|| RunError::Spawn {
        app: String::new(),
        why: "no command given after --".into(),
    })?;
    // Inherits stdio and environment (which holds no secret: credentials live in memory).
    let mut command = Command::new(app);
    command.args(args);
    if let Some(u) = user {
        if let Some(name) = &u.name {
            command.env("USER", name).env("LOGNAME", name);
        }
        if let Some(home) = &u.home {
            command.env("HOME", home);
        }
        let u = u.clone();
        // SAFETY: `switch` makes only async-signal-safe syscalls, as required between
        // fork and exec.
        unsafe {
            command.pre_exec(move || u.switch());
        }
    }
    let child = command.spawn().map_err(|e| RunError::Spawn {
        app: app.to_string_lossy().into_owned(),
        why: e.to_string(),
    })?;
    // The child is reaped with waitpid below (we may be PID 1 and must reap orphans too),
    // so the std handle is dropped without waiting.
    Ok(child.id() as i32)
}

/// Reaps every exited child; returns the app's wait status if it was among them.
fn reap(app: i32) -> Option<i32> {
    let mut app_status = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return app_status;
        }
        if pid == app {
            app_status = Some(status);
        }
    }
}

fn exit_code(status: i32) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        (128 + libc::WTERMSIG(status)).min(255) as u8
    } else {
        1
    }
}

fn send(pid: i32, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, sig);
    }
}

async fn supervise(
    pid: i32,
    cfg: &RunConfig,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
    hup: &mut tokio::signal::unix::Signal,
    chld: &mut tokio::signal::unix::Signal,
) -> Result<u8, RunError> {
    let mut deadline: Option<tokio::time::Instant> = None;
    // SIGCHLD may have come before the handler saw it: look once at the start, and
    // periodically, so no exit is missed.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        if let Some(st) = reap(pid) {
            let code = exit_code(st);
            tracing::info!(code, "app exited");
            return Ok(code);
        }
        let grace = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = chld.recv() => {}
            _ = tick.tick() => {}
            _ = term.recv() => {
                if deadline.is_some() {
                    tracing::warn!("second SIGTERM: killing the app");
                    send(pid, libc::SIGKILL);
                } else {
                    tracing::info!(grace_s = cfg.grace_period.as_secs_f32(), "SIGTERM: forwarded to the app");
                    send(pid, libc::SIGTERM);
                    deadline = Some(tokio::time::Instant::now() + cfg.grace_period);
                }
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: forwarded to the app");
                send(pid, libc::SIGINT);
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: forwarded to the app");
                send(pid, libc::SIGHUP);
            }
            _ = grace => {
                tracing::warn!(grace_s = cfg.grace_period.as_secs_f32(), "the app did not exit within the grace period: killing it");
                send(pid, libc::SIGKILL);
                deadline = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        // Wait statuses as the kernel encodes them.
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(libc::SIGKILL), 137);
        assert_eq!(exit_code(libc::SIGTERM), 143);
    }
}
