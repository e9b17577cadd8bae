//! The runtime the workers run on: threads of their own, at a lower CPU priority than the HTTP
//! server's. When the machine is saturated, catch hooks are answered first and steps take the CPU
//! that is left; the events accepted meanwhile wait durably in the inbox, and the workers catch up
//! as soon as the load eases.

use tokio::runtime::{Builder, Handle, Runtime};

/// How much lower the workers' priority is, as a `nice` value (0 is normal, 19 the lowest): under
/// contention a thread at 10 gets about a tenth of the share of one at 0.
const WORKER_NICE: i32 = 10;

/// A multi-threaded runtime (one thread per core) whose threads run at [`WORKER_NICE`]. Dropping
/// it stops its threads without waiting, which (unlike dropping a [`Runtime`]) may be done inside
/// another runtime.
pub struct WorkerRuntime(Option<Runtime>);

impl WorkerRuntime {
    /// Starts the runtime's threads.
    pub fn start() -> std::io::Result<Self> {
        Builder::new_multi_thread()
            .thread_name("hookflow-worker")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .map(|runtime| Self(Some(runtime)))
    }

    /// Where to spawn the workers' tasks.
    pub fn handle(&self) -> &Handle {
        self.0.as_ref().expect("set until dropped").handle()
    }
}

impl Drop for WorkerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority (Linux only: elsewhere `setpriority` applies to the
/// whole process). A failure only costs the preference, so it is logged, not returned.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `setpriority` reads only its three integer arguments; on Linux, `who` 0 with
        // `PRIO_PROCESS` names the calling thread.
        let status = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WORKER_NICE) };
        if status != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a worker thread's priority");
        }
    }
}
