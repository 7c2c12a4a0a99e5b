//! A tiny stand-in for Android's `/system/bin/sh`: quoting, `|`, `;`, `&&`, `||`, redirects to
//! `/dev/null`, and the handful of commands that provisioning tools send to a device.
//!
//! Output is what a legacy (non `shell_v2`) ADB shell delivers: stdout and stderr merged into
//! one stream, `\n` line endings, no exit status.

use crate::state::State;

/// What a command line printed, and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// stdout and stderr merged, as the legacy ADB shell delivers them.
    pub text: String,
    /// Exit status of the last pipeline that ran.
    pub status: i32,
}

/// Runs one command line against the device state.
pub fn run(line: &str, state: &State) -> Output {
    let list = match tokenize(line).and_then(parse) {
        Ok(list) => list,
        Err(message) => {
            return Output { text: format!("/system/bin/sh: {message}\n"), status: 1 };
        }
    };
    let mut text = String::new();
    let mut status = 0;
    for (connector, pipeline) in list {
        let skip = match connector {
            Connector::Always => false,
            Connector::IfOk => status != 0,
            Connector::IfFailed => status == 0,
        };
        if !skip {
            status = run_pipeline(&pipeline, state, &mut text);
        }
    }
    Output { text, status }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Pipe,
    And,
    Or,
    Semi,
    /// Output of `fd` goes nowhere we keep: we have no filesystem, so every file target
    /// (usually `/dev/null`) discards it. Duplications like `2>&1` are no-ops because the
    /// streams are merged anyway.
    Discard {
        fd: u8,
    },
    Dup,
}

/// How a pipeline is joined to the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connector {
    Always,
    IfOk,
    IfFailed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Command {
    argv: Vec<String>,
    drop_stdout: bool,
    drop_stderr: bool,
}

type Pipeline = Vec<Command>;

fn is_operator(c: char) -> bool {
    matches!(c, '|' | '&' | ';' | '>' | '<')
}

fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    let mut word = String::new();
    // Distinguishes an empty quoted word ('') from no word at all.
    let mut in_word = false;
    let mut quoted = false;
    macro_rules! flush {
        () => {
            if in_word {
                tokens.push(Token::Word(std::mem::take(&mut word)));
                in_word = false;
                quoted = false;
            }
        };
    }
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => flush!(),
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => word.push(ch),
                        None => return Err("no closing quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&ch @ ('"' | '\\' | '$' | '`')) => {
                                word.push(ch);
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some(ch) => word.push(ch),
                        None => return Err("no closing quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(ch) = chars.next() {
                    word.push(ch);
                }
            }
            '|' | '&' => {
                flush!();
                if chars.next_if_eq(&c).is_some() {
                    tokens.push(if c == '|' { Token::Or } else { Token::And });
                } else if c == '|' {
                    tokens.push(Token::Pipe);
                } else {
                    // Background jobs finish instantly here, so `&` is just a separator.
                    tokens.push(Token::Semi);
                }
            }
            ';' => {
                flush!();
                tokens.push(Token::Semi);
            }
            '>' => {
                let fd = if in_word && !quoted && (word == "1" || word == "2") {
                    let fd = if word == "2" { 2 } else { 1 };
                    word.clear();
                    in_word = false;
                    fd
                } else {
                    flush!();
                    1
                };
                chars.next_if_eq(&'>');
                if chars.next_if_eq(&'&').is_some() {
                    while chars.next_if(char::is_ascii_digit).is_some() {}
                    tokens.push(Token::Dup);
                    continue;
                }
                while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
                let mut target = String::new();
                while let Some(ch) = chars.next_if(|c| !c.is_whitespace() && !is_operator(*c)) {
                    target.push(ch);
                }
                if target.is_empty() {
                    return Err("syntax error: unexpected redirection".into());
                }
                tokens.push(Token::Discard { fd });
            }
            '<' => return Err("syntax error: input redirection is not supported".into()),
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        tokens.push(Token::Word(word));
    }
    Ok(tokens)
}

fn parse(tokens: Vec<Token>) -> Result<Vec<(Connector, Pipeline)>, String> {
    let mut list = Vec::new();
    let mut connector = Connector::Always;
    let mut pipeline: Pipeline = Vec::new();
    let mut command = Command::default();
    let unexpected = |t: &str| format!("syntax error: '{t}' unexpected");
    for token in tokens {
        match token {
            Token::Word(w) => command.argv.push(w),
            Token::Discard { fd: 1 } => command.drop_stdout = true,
            Token::Discard { .. } => command.drop_stderr = true,
            Token::Dup => {}
            Token::Pipe | Token::And | Token::Or | Token::Semi => {
                let symbol = match token {
                    Token::Pipe => "|",
                    Token::And => "&&",
                    Token::Or => "||",
                    _ => ";",
                };
                if command.argv.is_empty() {
                    // `a ;` and a lone `;` are fine; any other empty slot is an error.
                    if token == Token::Semi && pipeline.is_empty() {
                        connector = Connector::Always;
                        continue;
                    }
                    return Err(unexpected(symbol));
                }
                pipeline.push(std::mem::take(&mut command));
                if token != Token::Pipe {
                    list.push((connector, std::mem::take(&mut pipeline)));
                    connector = match token {
                        Token::And => Connector::IfOk,
                        Token::Or => Connector::IfFailed,
                        _ => Connector::Always,
                    };
                }
            }
        }
    }
    if command.argv.is_empty() {
        if !pipeline.is_empty() || connector != Connector::Always {
            return Err("syntax error: unexpected end of input".into());
        }
    } else {
        pipeline.push(command);
        list.push((connector, pipeline));
    }
    Ok(list)
}

/// Result of one simple command.
struct Exit {
    stdout: String,
    stderr: String,
    status: i32,
}

impl Exit {
    fn ok(stdout: impl Into<String>) -> Exit {
        Exit { stdout: stdout.into(), stderr: String::new(), status: 0 }
    }

    fn fail(stderr: impl Into<String>, status: i32) -> Exit {
        Exit { stdout: String::new(), stderr: stderr.into(), status }
    }
}

fn run_pipeline(pipeline: &[Command], state: &State, out: &mut String) -> i32 {
    let mut input = String::new();
    let mut status = 0;
    for command in pipeline {
        let exit = run_command(&command.argv, &input, state);
        if !command.drop_stderr {
            out.push_str(&exit.stderr);
        }
        input = if command.drop_stdout { String::new() } else { exit.stdout };
        status = exit.status;
    }
    out.push_str(&input);
    status
}

fn run_command(argv: &[String], input: &str, state: &State) -> Exit {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] => Exit::ok(""),
        ["getprop", rest @ ..] => getprop(rest, state),
        ["setprop", rest @ ..] => setprop(rest, state),
        ["pm", rest @ ..] => pm(rest, state),
        ["am", rest @ ..] => am(rest, state),
        ["dumpsys", rest @ ..] => dumpsys(rest, state),
        ["wm", rest @ ..] => wm(rest, state),
        ["echo", rest @ ..] => echo(rest),
        ["grep", rest @ ..] => grep(rest, input),
        ["true"] => Exit::ok(""),
        ["false"] => Exit::fail("", 1),
        [name, ..] => Exit::fail(format!("/system/bin/sh: {name}: not found\n"), 127),
    }
}

fn getprop(args: &[&str], state: &State) -> Exit {
    match args {
        [] => Exit::ok(state.props().iter().map(|(k, v)| format!("[{k}]: [{v}]\n")).collect::<String>()),
        [key] => Exit::ok(format!("{}\n", state.prop(key).unwrap_or_default())),
        [key, default] => Exit::ok(format!("{}\n", state.prop(key).unwrap_or_else(|| default.to_string()))),
        _ => Exit::fail("usage: getprop [NAME [DEFAULT]]\n", 1),
    }
}

fn setprop(args: &[&str], state: &State) -> Exit {
    let [key, value] = args else {
        return Exit::fail("usage: setprop NAME VALUE\n", 1);
    };
    match state.set_prop(key, value) {
        Ok(()) => Exit::ok(""),
        Err(_) => Exit::fail(
            format!("Failed to set property '{key}' to '{value}'.\nSee dmesg for error reason.\n"),
            1,
        ),
    }
}

/// Drops `--user N` (and similar value-taking options) so only positional arguments remain.
fn positional<'a>(args: &[&'a str], with_value: &[&str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if with_value.contains(arg) {
            iter.next();
        } else if !arg.starts_with('-') {
            out.push(*arg);
        }
    }
    out
}

fn pm(args: &[&str], state: &State) -> Exit {
    match args {
        ["clear", rest @ ..] => match positional(rest, &["--user"]).as_slice() {
            [package] => {
                state.stop_package(package);
                Exit::ok("Success\n")
            }
            _ => Exit::fail("Error: no package specified\n", 1),
        },
        [other, ..] => Exit::fail(format!("Unknown command: {other}\n"), 1),
        [] => Exit::fail("usage: pm clear PACKAGE\n", 1),
    }
}

fn am(args: &[&str], state: &State) -> Exit {
    match args {
        ["start" | "start-activity", rest @ ..] => {
            let mut component = None;
            let mut iter = rest.iter();
            while let Some(arg) = iter.next() {
                match *arg {
                    "-n" => component = iter.next().copied(),
                    // Options with one value; extras (--es KEY VALUE) take two.
                    "-a" | "-d" | "-t" | "-c" | "-f" | "-R" | "-P" | "--user" | "--display"
                    | "--windowingMode" | "--activityType" => {
                        iter.next();
                    }
                    "-e" | "--es" | "--ei" | "--el" | "--ef" | "--ez" | "--eu" => {
                        iter.next();
                        iter.next();
                    }
                    _ => {}
                }
            }
            match component {
                Some(c) if c.split_once('/').is_some_and(|(p, a)| !p.is_empty() && !a.is_empty()) => {
                    state.start_activity(c);
                    Exit::ok(format!("Starting: Intent {{ cmp={c} }}\n"))
                }
                Some(c) => Exit::fail(format!("Error: Bad component name: {c}\n"), 1),
                None => Exit::fail("Error: android-sim needs -n PACKAGE/ACTIVITY\n", 1),
            }
        }
        ["force-stop", rest @ ..] => match positional(rest, &["--user"]).as_slice() {
            [package] => {
                state.stop_package(package);
                Exit::ok("")
            }
            _ => Exit::fail("Error: no package specified\n", 1),
        },
        [other, ..] => Exit::fail(format!("Unknown command: {other}\n"), 1),
        [] => Exit::fail("usage: am start -n PACKAGE/ACTIVITY | am force-stop PACKAGE\n", 1),
    }
}

fn dumpsys(args: &[&str], state: &State) -> Exit {
    let fg = state.foreground();
    let activities = || {
        let mut s = String::from(
            "ACTIVITY MANAGER ACTIVITIES (dumpsys activity activities)\n\
             Display #0 (activities from top to bottom):\n",
        );
        if let Some(c) = &fg {
            s.push_str(&format!("  mResumedActivity: ActivityRecord{{1a2b3c u0 {c} t12}}\n"));
        }
        s
    };
    let windows = || {
        let mut s = String::from("WINDOW MANAGER WINDOWS (dumpsys window windows)\n");
        match &fg {
            Some(c) => {
                s.push_str(&format!("  mCurrentFocus=Window{{1a2b3c u0 {c}}}\n"));
                s.push_str(&format!("  mFocusedApp=ActivityRecord{{1a2b3c u0 {c} t12}}\n"));
            }
            None => s.push_str("  mCurrentFocus=null\n  mFocusedApp=null\n"),
        }
        s
    };
    match args.first() {
        None => Exit::ok(activities() + &windows()),
        Some(&"activity") => Exit::ok(activities()),
        Some(&"window") => Exit::ok(windows()),
        Some(other) => Exit::fail(format!("Can't find service: {other}\n"), 0),
    }
}

fn wm(args: &[&str], state: &State) -> Exit {
    let d = state.display;
    match args {
        ["size"] => Exit::ok(format!("Physical size: {}x{}\n", d.width, d.height)),
        ["density"] => Exit::ok(format!("Physical density: {}\n", d.dpi)),
        _ => Exit::fail("usage: wm size | wm density\n", 1),
    }
}

fn echo(args: &[&str]) -> Exit {
    match args {
        ["-n", rest @ ..] => Exit::ok(rest.join(" ")),
        _ => Exit::ok(args.join(" ") + "\n"),
    }
}

/// `grep [-i] [-v] [-F] [-e] PATTERN`: a plain substring filter over stdin.
fn grep(args: &[&str], input: &str) -> Exit {
    let (mut ignore_case, mut invert, mut pattern) = (false, false, None);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match *arg {
            "-i" => ignore_case = true,
            "-v" => invert = true,
            "-F" | "-E" => {}
            "-e" => pattern = iter.next().copied(),
            "-iv" | "-vi" => (ignore_case, invert) = (true, true),
            p if pattern.is_none() => pattern = Some(p),
            _ => return Exit::fail("grep: reading files is not supported by android-sim\n", 2),
        }
    }
    let Some(pattern) = pattern else {
        return Exit::fail("usage: grep [-iv] PATTERN\n", 2);
    };
    let needle = if ignore_case { pattern.to_lowercase() } else { pattern.to_string() };
    let matched: String = input
        .split_inclusive('\n')
        .filter(|line| {
            let hit =
                if ignore_case { line.to_lowercase().contains(&needle) } else { line.contains(&needle) };
            hit != invert
        })
        .collect();
    let status = if matched.is_empty() { 1 } else { 0 };
    Exit { stdout: matched, stderr: String::new(), status }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    fn device(boot_secs: u64) -> State {
        State::new(&Config {
            boot: Duration::from_secs(boot_secs),
            model: "TestPhone".into(),
            ..Config::default()
        })
    }

    fn sh(state: &State, line: &str) -> String {
        run(line, state).text
    }

    fn words(line: &str) -> Vec<String> {
        tokenize(line)
            .unwrap()
            .into_iter()
            .map(|t| match t {
                Token::Word(w) => w,
                other => format!("<{other:?}>"),
            })
            .collect()
    }

    #[test]
    fn tokenizer_handles_quotes_and_operators() {
        assert_eq!(words("echo 'a b'  \"c\\\"d\" e\\ f"), ["echo", "a b", "c\"d", "e f"]);
        assert_eq!(words("setprop k ''"), ["setprop", "k", ""]);
        assert_eq!(words("a|b"), ["a", "<Pipe>", "b"]);
        assert_eq!(words("a && b || c; d"), ["a", "<And>", "b", "<Or>", "c", "<Semi>", "d"]);
        assert_eq!(words("a 2>/dev/null"), ["a", "<Discard { fd: 2 }>"]);
        assert_eq!(words("a > /dev/null 2>&1"), ["a", "<Discard { fd: 1 }>", "<Dup>"]);
        assert_eq!(words("echo x # comment"), ["echo", "x"]);
        assert!(tokenize("echo 'open").is_err());
    }

    #[test]
    fn syntax_errors_are_reported_like_sh() {
        let s = device(0);
        assert_eq!(sh(&s, "| grep x"), "/system/bin/sh: syntax error: '|' unexpected\n");
        assert_eq!(run("echo a &&", &s).status, 1);
        assert_eq!(sh(&s, "echo a;"), "a\n");
    }

    #[test]
    fn getprop_and_boot() {
        let booting = device(3600);
        assert_eq!(sh(&booting, "getprop sys.boot_completed"), "0\n");
        let s = device(0);
        assert_eq!(sh(&s, "getprop sys.boot_completed"), "1\n");
        assert_eq!(sh(&s, "getprop dev.bootcomplete"), "1\n");
        assert_eq!(sh(&s, "getprop ro.product.model"), "TestPhone\n");
        assert_eq!(sh(&s, "getprop ro.build.version.sdk"), "33\n");
        assert_eq!(sh(&s, "getprop no.such.prop"), "\n");
        assert_eq!(sh(&s, "getprop no.such.prop fallback"), "fallback\n");
        let all = sh(&s, "getprop");
        assert!(all.contains("[ro.build.version.release]: [13]\n"), "{all}");
        assert!(all.contains("[sim.display.width]: [720]\n"), "{all}");
        assert!(all.contains("[sys.boot_completed]: [1]\n"), "{all}");
    }

    #[test]
    fn setprop_round_trips_and_refuses_read_only() {
        let s = device(0);
        assert_eq!(sh(&s, "setprop sim.stream.token abc"), "");
        assert_eq!(sh(&s, "getprop sim.stream.token"), "abc\n");
        assert_eq!(sh(&s, "setprop sim.stream.token ''"), "");
        assert_eq!(sh(&s, "getprop sim.stream.token"), "\n");
        let out = run("setprop ro.product.model X", &s);
        assert_eq!(out.status, 1);
        assert!(out.text.starts_with("Failed to set property 'ro.product.model' to 'X'."));
    }

    #[test]
    fn activities_start_clear_and_stop() {
        let s = device(0);
        assert!(!sh(&s, "dumpsys activity activities").contains("mResumedActivity"));
        assert_eq!(
            sh(&s, "am start -W -S -a android.intent.action.MAIN -n com.game/.Main"),
            "Starting: Intent { cmp=com.game/.Main }\n"
        );
        assert_eq!(
            sh(&s, "dumpsys activity activities | grep mResumedActivity"),
            "  mResumedActivity: ActivityRecord{1a2b3c u0 com.game/.Main t12}\n"
        );
        assert_eq!(
            sh(&s, "dumpsys window | grep mCurrentFocus"),
            "  mCurrentFocus=Window{1a2b3c u0 com.game/.Main}\n"
        );
        assert_eq!(sh(&s, "pm clear com.other"), "Success\n");
        assert!(s.foreground().is_some());
        assert_eq!(sh(&s, "pm clear com.game"), "Success\n");
        assert!(!sh(&s, "dumpsys activity activities").contains("mResumedActivity"));
        sh(&s, "am start -n com.game/.Main");
        assert_eq!(sh(&s, "am force-stop --user 0 com.game"), "");
        assert_eq!(s.foreground(), None);
        assert_eq!(sh(&s, "am start -n nonsense"), "Error: Bad component name: nonsense\n");
    }

    #[test]
    fn display_commands() {
        let s = device(0);
        assert_eq!(sh(&s, "wm size"), "Physical size: 720x1280\n");
        assert_eq!(sh(&s, "wm density"), "Physical density: 320\n");
        assert_eq!(sh(&s, "echo hello   world"), "hello world\n");
        assert_eq!(sh(&s, "echo -n hi"), "hi");
    }

    #[test]
    fn grep_pipeline_filters_lines() {
        let s = device(0);
        assert_eq!(sh(&s, "getprop | grep ro.build.version.sdk"), "[ro.build.version.sdk]: [33]\n");
        assert_eq!(sh(&s, "echo Hello | grep -i hello"), "Hello\n");
        assert_eq!(sh(&s, "echo a | grep -v a"), "");
        assert_eq!(run("echo a | grep b", &s).status, 1);
        assert_eq!(sh(&s, "getprop | grep -e width | grep display"), "[sim.display.width]: [720]\n");
    }

    #[test]
    fn lists_and_redirects() {
        let s = device(0);
        assert_eq!(sh(&s, "echo a; echo b"), "a\nb\n");
        assert_eq!(sh(&s, "false && echo no || echo yes"), "yes\n");
        assert_eq!(sh(&s, "echo a >/dev/null; echo b"), "b\n");
        assert_eq!(sh(&s, "nosuch 2>/dev/null"), "");
        assert_eq!(sh(&s, "nosuch x y"), "/system/bin/sh: nosuch: not found\n");
        assert_eq!(run("nosuch", &s).status, 127);
        assert_eq!(sh(&s, "dumpsys battery"), "Can't find service: battery\n");
    }
}
