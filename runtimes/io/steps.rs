//! Performs the steps of a token exchange: HTTP requests, file reads, programs.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::http;
use crate::{Error, Next, ProgramOutput, ProgramRequest, Step, StepOutput, Token, TokenSource};

/// How often a running program is checked for exit. Programs run only to obtain a token
/// (the Azure CLI), so a short poll costs little.
const PROGRAM_POLL: Duration = Duration::from_millis(10);

/// Runs one token attempt of `source` to its end.
pub(crate) fn run_exchange(agent: &ureq::Agent, source: &dyn TokenSource) -> Result<Token, Error> {
    let mut exchange = source.exchange();
    let mut next = exchange.start(SystemTime::now());
    loop {
        match next {
            Next::Done(outcome) => return outcome,
            Next::Step(step) => {
                let output = perform(agent, step);
                next = exchange.resume(SystemTime::now(), output);
            }
        }
    }
}

/// Performs one step.
fn perform(agent: &ureq::Agent, step: Step) -> Result<StepOutput, Error> {
    match step {
        Step::Http(request) => http::send(agent, &request).map(StepOutput::Http),
        Step::ReadFile { path, max_len } => read_file(&path, max_len).map(StepOutput::File),
        Step::Run(program) => run_program(&program).map(StepOutput::Program),
    }
}

fn io_error(operation: String, error: &std::io::Error) -> Error {
    Error::Io {
        operation,
        kind: error.kind(),
        reason: error.to_string(),
    }
}

fn read_file(path: &Path, max_len: u64) -> Result<Vec<u8>, Error> {
    let operation = || format!("read {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| io_error(operation(), &e))?;
    let mut contents = Vec::new();
    file.take(max_len + 1)
        .read_to_end(&mut contents)
        .map_err(|e| io_error(operation(), &e))?;
    if contents.len() as u64 > max_len {
        return Err(Error::Io {
            operation: operation(),
            kind: std::io::ErrorKind::InvalidData,
            reason: format!("the file is larger than {max_len} bytes"),
        });
    }
    Ok(contents)
}

/// Runs a program without a shell, killing it after its timeout.
fn run_program(request: &ProgramRequest) -> Result<ProgramOutput, Error> {
    let operation = || format!("run {}", request.program);
    let mut child = Command::new(&request.program)
        .args(&request.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io_error(operation(), &e))?;
    // Read both pipes on their own threads, so a chatty program cannot block on a full pipe.
    let stdout = child.stdout.take().map(read_to_end_thread);
    let stderr = child.stderr.take().map(read_to_end_thread);
    let deadline = Instant::now() + request.timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| io_error(operation(), &e))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Io {
                operation: operation(),
                kind: std::io::ErrorKind::TimedOut,
                reason: format!("no exit after {:.1} s", request.timeout.as_secs_f64()),
            });
        }
        std::thread::sleep(PROGRAM_POLL);
    };
    let join = |handle: Option<std::thread::JoinHandle<Vec<u8>>>| {
        handle.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(ProgramOutput {
        exit_code: status.code(),
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

fn read_to_end_thread(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = pipe.read_to_end(&mut buffer);
        buffer
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    fn program(name: &str, args: &[&str], timeout: Duration) -> ProgramRequest {
        ProgramRequest {
            program: name.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            timeout,
        }
    }

    fn io_kind(error: Error) -> ErrorKind {
        match error {
            Error::Io { kind, .. } => kind,
            other => panic!("expected an I/O error, got {other}"),
        }
    }

    #[test]
    fn program_output_is_captured() {
        let output = run_program(&program("echo", &["a b"], Duration::from_secs(5))).unwrap();
        assert_eq!(output.exit_code, Some(0));
        assert_eq!(output.stdout, b"a b\n");
        let output = run_program(&program("false", &[], Duration::from_secs(5))).unwrap();
        assert_eq!(output.exit_code, Some(1));
    }

    #[test]
    fn slow_program_is_killed() {
        let started = Instant::now();
        let error = run_program(&program("sleep", &["5"], Duration::from_millis(200))).unwrap_err();
        assert_eq!(io_kind(error), ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn missing_program_is_not_found() {
        let error = run_program(&program("no-such-program-xyz", &[], Duration::from_secs(1)));
        assert_eq!(io_kind(error.unwrap_err()), ErrorKind::NotFound);
    }

    #[test]
    fn file_size_limit_is_enforced() {
        let path = std::env::temp_dir().join(format!("redis-entraid-steps-{}", std::process::id()));
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_file(&path, 5).unwrap(), b"12345");
        assert_eq!(
            io_kind(read_file(&path, 4).unwrap_err()),
            ErrorKind::InvalidData
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            io_kind(read_file(&path, 4).unwrap_err()),
            ErrorKind::NotFound
        );
    }
}
