//! What an image says to run: the process part of its OCI configuration
//! (Entrypoint, Cmd, Env, WorkingDir, User), kept with a converted disk so a
//! cached run needs no registry, and read from the configuration when the
//! layers are served directly.

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

/// Commands the kernel may run as PID 1 of a whole system (by base name).
const INITS: [&str; 2] = ["init", "systemd"];

/// The image's process settings, as its configuration gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageProcess {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`: the arguments after the entrypoint (or the command without one).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env`, `KEY=VALUE` each.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`; empty: `/`.
    #[serde(default)]
    pub working_dir: String,
    /// `User`: `name`, `uid`, `name:group` or `uid:gid`; empty: root.
    #[serde(default)]
    pub user: String,
}

impl ImageProcess {
    /// The process settings of `config` (all empty when it has none).
    pub fn from_config(config: &ImageConfiguration) -> ImageProcess {
        let Some(c) = config.config() else {
            return ImageProcess::default();
        };
        ImageProcess {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
        }
    }

    /// The command line the image runs: Entrypoint, then Cmd.
    pub fn argv(&self) -> Vec<&str> {
        self.entrypoint
            .iter()
            .chain(&self.cmd)
            .map(String::as_str)
            .collect()
    }

    /// The program, when the image's whole command is one absolute path to
    /// a system init (`/sbin/init`, `/lib/systemd/systemd`, ...): what a
    /// system image boots as PID 1. Arguments, a relative name or any other
    /// program (a shell, a server) are an application's command: `None`.
    pub fn init(&self) -> Option<&str> {
        let [program] = self.argv()[..] else {
            return None;
        };
        let name = program.rsplit('/').next()?;
        (program.starts_with('/') && INITS.contains(&name)).then_some(program)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_the_process_fields() {
        let p = ImageProcess::from_config(&config(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
               "config":{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["A=1"],
                         "WorkingDir":"/srv","User":"app:app"}}"#,
        ));
        assert_eq!(p.argv(), ["/bin/app", "--serve"]);
        assert_eq!(p.env, ["A=1"]);
        assert_eq!(
            (p.working_dir.as_str(), p.user.as_str()),
            ("/srv", "app:app")
        );
        assert_eq!(p.init(), None);
        let empty = ImageProcess::from_config(&config(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        ));
        assert_eq!(empty, ImageProcess::default());
        assert_eq!(empty.init(), None);
    }

    #[test]
    fn only_a_lone_absolute_init_is_an_init() {
        let with = |entrypoint: &[&str], cmd: &[&str]| ImageProcess {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..ImageProcess::default()
        };
        assert_eq!(with(&[], &["/sbin/init"]).init(), Some("/sbin/init"));
        assert_eq!(
            with(&["/lib/systemd/systemd"], &[]).init(),
            Some("/lib/systemd/systemd")
        );
        assert_eq!(with(&[], &["/bin/sh"]).init(), None);
        assert_eq!(with(&[], &["init"]).init(), None);
        assert_eq!(with(&["/sbin/init"], &["--log-level=debug"]).init(), None);
        assert_eq!(with(&[], &[]).init(), None);
    }
}
