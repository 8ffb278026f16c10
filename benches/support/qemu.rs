//! What the benchmarks that run QEMU share: its processes (killed when they
//! go out of scope) and a QMP client. Included by `#[path]`, so it is not a
//! benchmark of its own.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A child process that is killed when it goes out of scope.
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    pub fn spawn(command: &mut Command, name: impl Into<String>) -> Result<Self, String> {
        let name = name.into();
        let child = command.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Process { child, name })
    }

    pub fn ensure_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(format!("{} exited early ({status})", self.name)),
            _ => Ok(()),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A QMP connection: one JSON object per line, events skipped.
pub struct Qmp {
    stream: BufReader<UnixStream>,
}

impl Qmp {
    pub fn connect(socket: &Path, qemu: &mut Process) -> Result<Self, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => return Err(format!("QMP: {e}")),
                Err(_) => {
                    qemu.ensure_alive()?;
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            stream: BufReader::new(stream),
        };
        qmp.read()?; // the greeting
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    pub fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.stream.read_line(&mut line) {
            Ok(0) => Err("QMP: connection closed".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("QMP: {e}: {line}")),
            Err(e) => Err(format!("QMP: {e}")),
        }
    }

    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        writeln!(self.stream.get_mut(), "{request}").map_err(|e| format!("QMP: {e}"))?;
        loop {
            let message = self.read()?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                return Err(format!("QMP {command}: {}", error["desc"]));
            }
        }
    }
}
