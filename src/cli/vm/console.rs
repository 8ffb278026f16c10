//! `vmig vm console VM [--follow | --attach]`: a VM's serial console,
//! wherever it runs: its end, a live follow across migrations, or an
//! interactive session like `virsh console` (detach with Ctrl-]).

use std::os::fd::AsFd;

use nix::sys::termios::{self, OutputFlags, SetArg, Termios};
use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::cli::UsageError;
use crate::exit::Exit;
use crate::ops::cluster::Cluster;
use crate::ops::console::{self, ConsoleEvent, Start};
use crate::render::console::ConsoleView;

/// Ctrl-]: ends `--attach`, as in `virsh console` and telnet.
const DETACH: u8 = 0x1d;

#[derive(Debug, Args)]
#[command(
    after_help = "Without --follow or --attach, the end of the console (--bytes) is printed once.\n\n\
    --follow prints the console as the guest writes it (a prompt without a newline at once) and goes with \
    the VM when it migrates: every byte once, in order, none lost at the switchover. It ends when the VM \
    stops (exit 0) or on Ctrl-C. Bytes go to standard output as they are (terminal or pipe); notes \
    (moves, the end) to standard error. With --json, one JSON line per event: {\"output\":{\"at\",\"len\",\
    \"text\"}}, {\"skipped\":{\"from\",\"to\"}}, {\"moved\":{\"from\",\"to\",\"at\"}}, \
    {\"retrying\":{\"host\",\"error\"}}, {\"ended\":{\"vm\",\"host\",\"at\",\"reason\"}}; `at` is the byte's \
    absolute offset in the VM's console, counted over its whole life on every host.\n\n\
    --attach also sends what you type to the guest (the terminal in raw mode: Ctrl-C goes to the guest too). \
    Detach with Ctrl-] (the byte 0x1d). Input typed while the VM migrates waits and goes to where it runs \
    next; no byte is sent twice. Without a terminal, standard input is sent until its end, then it detaches.\n\n\
    Examples:\n  vmig vm console vm1\n  vmig vm console vm1 --follow\n  vmig vm console vm1 --attach\n  \
    vmig vm console vm1 --follow --from 0 --json"
)]
pub struct ConsoleArgs {
    /// The VM's name.
    name: String,
    /// How much of the end of the console to print (first, with --follow or --attach).
    #[arg(long, value_name = "SIZE", default_value = "16K")]
    bytes: String,
    /// Keep printing the console as the guest writes it, across migrations, until the VM stops.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Interactive: also send what is typed to the guest's console; detach with Ctrl-].
    #[arg(long, conflicts_with = "json")]
    attach: bool,
    /// With --follow or --attach: begin at this absolute byte offset of the console instead of the last --bytes.
    #[arg(long, value_name = "OFFSET")]
    from: Option<u64>,
    /// Print JSON (with --follow: one line per event).
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &ConsoleArgs, inventory: Option<&Path>) -> Result<Exit> {
    let bytes = vmig_backend::size::parse_size(&args.bytes).map_err(|e| UsageError(format!("--bytes: {e}")))?;
    if args.from.is_some() && !(args.follow || args.attach) {
        return Err(UsageError("--from needs --follow or --attach".into()).into());
    }
    let start = match args.from {
        Some(at) => Start::At(at),
        None => Start::Last(bytes),
    };
    let cluster = Cluster::open(inventory)?;
    if args.attach {
        return attach(args, &Arc::new(cluster), start);
    }
    if !args.follow {
        let (host, text) = console::tail(&cluster, &args.name, bytes)?;
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln(
                &mut out,
                &json!({ "vm": args.name, "host": host, "text": text }).to_string(),
            )?;
        } else {
            std::io::Write::write_all(&mut out, text.as_bytes())?;
        }
        return Ok(Exit::Ok);
    }
    let view = ConsoleView::new(args.json, false);
    let mut failed = None;
    let followed = console::follow(
        &cluster,
        &args.name,
        start,
        &mut |event| match view.event(&args.name, &event) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    view.ended(&args.name, &followed)?;
    Ok(Exit::Ok)
}

fn writeln(out: &mut impl std::io::Write, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}

/// Why `--attach` ends.
enum Ended {
    Followed(Result<console::Followed, console::ConsoleError>),
    /// Ctrl-], or the end of input that is not a terminal.
    Detached,
}

/// The console both ways: a thread follows it to standard output, one hands
/// input to the guest in the order typed, and this one reads the terminal
/// (raw) until Ctrl-], the end of input, or the end of the follow.
fn attach(args: &ConsoleArgs, cluster: &Arc<Cluster>, start: Start) -> Result<Exit> {
    let raw = RawMode::enter()?;
    let view = ConsoleView::new(false, raw.is_some());
    let vm = args.name.clone();
    // Look it up once here, so an unknown VM is a plain error (exit 7).
    cluster.locate(&vm)?;
    view.note(&format!("{vm}'s console; detach with Ctrl-]"));

    let (ended_tx, ended_rx) = mpsc::channel();
    {
        let (cluster, vm, ended_tx) = (Arc::clone(cluster), vm.clone(), ended_tx.clone());
        std::thread::spawn(move || {
            let followed = console::follow(&cluster, &vm, start, &mut |event: ConsoleEvent<'_>| match view
                .event(&vm, &event)
            {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            });
            let _ = ended_tx.send(Ended::Followed(followed));
        });
    }
    let (input_tx, input_rx) = mpsc::channel::<Vec<u8>>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    {
        let (cluster, vm) = (Arc::clone(cluster), vm.clone());
        std::thread::spawn(move || {
            let mut input = console::Input::new(&cluster, &vm);
            for bytes in input_rx {
                if let Err(e) = input.send(&bytes) {
                    view.note(&crate::ops::code::describe(&e));
                }
            }
            let _ = sent_tx.send(());
        });
    }
    let ended = loop {
        match ended_rx.try_recv() {
            Ok(ended) => break ended,
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => break Ended::Detached,
        }
        match read_input(Duration::from_millis(100))? {
            Input::Nothing => {}
            Input::Bytes(bytes) => match bytes.iter().position(|&b| b == DETACH) {
                Some(at) => {
                    if at > 0 {
                        let _ = input_tx.send(bytes[..at].to_vec());
                    }
                    break Ended::Detached;
                }
                None => {
                    let _ = input_tx.send(bytes);
                }
            },
            Input::End => break Ended::Detached,
        }
    };
    // What was typed before the end is delivered (a while, at most).
    drop(input_tx);
    let _ = sent_rx.recv_timeout(if raw.is_some() {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(90)
    });
    drop(raw);
    match ended {
        Ended::Followed(followed) => {
            let followed = followed?;
            view.ended(&vm, &followed)?;
        }
        Ended::Detached => view.note(&format!("detached from {vm}'s console")),
    }
    // The follow's thread is left behind: the process ends now.
    Ok(Exit::Ok)
}

/// What standard input had.
enum Input {
    Nothing,
    Bytes(Vec<u8>),
    End,
}

/// Waits up to `wait` for standard input, and reads what it has.
fn read_input(wait: Duration) -> std::io::Result<Input> {
    use nix::errno::Errno;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX)) {
        Ok(0) | Err(Errno::EINTR) => return Ok(Input::Nothing),
        Ok(_) => {}
        Err(errno) => return Err(errno.into()),
    }
    let mut buf = [0u8; 4096];
    // Read from the descriptor, not through `std::io::Stdin`, whose buffer
    // would hold bytes that `poll` does not see.
    match nix::unistd::read(stdin.as_fd(), &mut buf) {
        Ok(0) => Ok(Input::End),
        Ok(n) => Ok(Input::Bytes(buf[..n].to_vec())),
        Err(Errno::EINTR) => Ok(Input::Nothing),
        Err(errno) => Err(errno.into()),
    }
}

/// The terminal on standard input in raw mode (every key as it is typed,
/// Ctrl-C included, no echo) while this lives; output still ends lines
/// with CR LF, so a guest's LF starts a new line.
struct RawMode {
    original: Termios,
}

impl RawMode {
    /// None when standard input is no terminal.
    fn enter() -> std::io::Result<Option<Self>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let original = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        raw.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Some(Self { original }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.original);
    }
}

impl std::fmt::Debug for RawMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMode").finish_non_exhaustive()
    }
}
