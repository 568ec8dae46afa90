//! A small command-line parser shared by the examples: flags with values,
//! boolean switches and positional arguments, with usage errors that exit 2.

use std::collections::BTreeMap;

/// Parsed arguments.
#[derive(Debug, Default)]
pub struct Args {
    /// Positional arguments, in order.
    pub positional: Vec<String>,
    values: BTreeMap<String, String>,
    switches: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`: `--name value` for the names in
    /// `with_value`, `--name` alone for those in `switches`. `--help`
    /// prints the usage and `--version` the version and the features this
    /// binary was built with, each then exiting 0.
    pub fn parse(usage: &str, with_value: &[&str], switches: &[&str]) -> Self {
        let mut args = Self::default();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            if arg == "-h" || arg == "--help" {
                println!("{usage}");
                std::process::exit(0);
            }
            if arg == "--version" {
                println!("{}", crate::version_line());
                std::process::exit(0);
            }
            match arg.strip_prefix("--") {
                Some(name) if with_value.contains(&name) => match it.next() {
                    Some(v) => {
                        args.values.insert(name.to_owned(), v);
                    }
                    None => usage_error(usage, &format!("--{name} needs a value")),
                },
                Some(name) if switches.contains(&name) => args.switches.push(name.to_owned()),
                Some(name) => usage_error(usage, &format!("unknown option --{name}")),
                None => args.positional.push(arg),
            }
        }
        args
    }

    /// The value of `--name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of `--name` parsed, or a usage error.
    pub fn parsed<T: std::str::FromStr>(&self, usage: &str, name: &str) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        self.value(name).map(|v| {
            v.parse().unwrap_or_else(|e| usage_error(usage, &format!("--{name} {v}: {e}")))
        })
    }

    /// Whether `--name` was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

/// Prints the message and the usage to stderr and exits with status 2.
pub fn usage_error(usage: &str, message: &str) -> ! {
    eprintln!("error: {message}\n\n{usage}");
    std::process::exit(2)
}
