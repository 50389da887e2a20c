//! Reader threads: positioned reads of stored frames, off the caller's executor.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures_channel::oneshot;

/// One frame to read.
pub(crate) struct Read {
    pub(crate) file: Arc<File>,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// Frames to read together, answered in the same order.
pub(crate) enum ReadJob {
    Frames {
        reads: Vec<Read>,
        done: oneshot::Sender<Vec<io::Result<Vec<u8>>>>,
    },
    Stop,
}

/// Starts `count` reader threads sharing `jobs`.
pub(crate) fn spawn(count: usize) -> io::Result<(Sender<ReadJob>, Vec<JoinHandle<()>>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let rx = rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("cnerium-file-read-{i}"))
            .spawn(move || run(&rx))?;
        handles.push(handle);
    }
    Ok((tx, handles))
}

fn run(jobs: &Mutex<Receiver<ReadJob>>) {
    loop {
        // Holding the lock only while waiting for one job lets the other threads read.
        let job = {
            let jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.recv()
        };
        match job {
            Ok(ReadJob::Frames { reads, done }) => {
                let results = reads.iter().map(read_frame).collect();
                // The caller may have stopped waiting; the bytes are then not needed.
                let _ = done.send(results);
            }
            Ok(ReadJob::Stop) | Err(_) => return,
        }
    }
}

fn read_frame(read: &Read) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; read.len as usize];
    read.file.read_exact_at(&mut buf, read.offset)?;
    Ok(buf)
}
