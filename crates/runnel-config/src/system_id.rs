//! The `.runner_system_id` file next to config.toml: which machine this runner manager is.
//!
//! The ID is `s_` + 12 hex characters derived from the machine ID (so reinstalling on the same
//! host keeps it), or `r_` + 12 random alphanumerics when no machine ID is readable. A valid
//! saved ID is always reused. Sending it to GitLab is `runnel-api`'s job.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::Sha256;

use crate::write::{WriteError, parent_dir, write_private};

/// Name of the system ID file, next to config.toml.
pub const SYSTEM_ID_FILE_NAME: &str = ".runner_system_id";
/// Where the machine ID is read from by default.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";
/// The HMAC message the official runner uses to derive the ID from the machine ID.
const APP_ID: &[u8] = b"gitlab-runner";
/// Characters after the `s_`/`r_` prefix.
const ID_LEN: usize = 12;

/// A runner system ID such as `s_760931104d8c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SystemId(String);

impl SystemId {
    /// Accepts `^[sr]_[0-9a-zA-Z]{12}$` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (prefix, rest) = text.split_at_checked(2)?;
        let valid = matches!(prefix, "s_" | "r_")
            && rest.len() == ID_LEN
            && rest.bytes().all(|b| b.is_ascii_alphanumeric());
        valid.then(|| Self(text.to_owned()))
    }

    /// `s_` + the first 12 hex characters of HMAC-SHA256(key = machine ID, "gitlab-runner").
    pub fn from_machine_id(machine_id: &str) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(machine_id.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(APP_ID);
        let digest = hex::encode(mac.finalize().into_bytes());
        Self(format!("s_{}", &digest[..ID_LEN]))
    }

    /// `r_` + 12 random alphanumerics, for hosts without a machine ID.
    pub fn random() -> Self {
        let suffix: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(ID_LEN)
            .map(char::from)
            .collect();
        Self(format!("r_{suffix}"))
    }

    /// The ID as sent to GitLab.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the system ID could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum SystemIdError {
    /// The file exists but could not be read.
    #[error("failed to read system ID file {}", path.display())]
    Read {
        /// The system ID file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A new ID could not be saved.
    #[error("failed to save system ID file {}", path.display())]
    Save {
        /// The system ID file.
        path: PathBuf,
        /// Why writing failed.
        #[source]
        source: WriteError,
    },
}

/// The `.runner_system_id` file of one config file.
#[derive(Debug, Clone)]
pub struct SystemIdFile {
    path: PathBuf,
    machine_id_path: PathBuf,
}

impl SystemIdFile {
    /// The system ID file in the directory of `config_path`.
    pub fn next_to(config_path: &Path) -> Self {
        Self {
            path: parent_dir(config_path).join(SYSTEM_ID_FILE_NAME),
            machine_id_path: PathBuf::from(MACHINE_ID_PATH),
        }
    }

    /// Reads the machine ID from `path` instead of `/etc/machine-id`.
    pub fn with_machine_id_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.machine_id_path = path.into();
        self
    }

    /// Where the ID is stored.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved ID if it is valid; otherwise a new one, saved with mode 0600.
    pub fn load_or_create(&self) -> Result<SystemId, SystemIdError> {
        if let Some(id) = self.load()? {
            return Ok(id);
        }
        let id = self.generate();
        write_private(&self.path, id.as_str().as_bytes()).map_err(|source| {
            SystemIdError::Save {
                path: self.path.clone(),
                source,
            }
        })?;
        tracing::info!(message = "Created runner system ID.", system_id = %id, path = %self.path.display());
        Ok(id)
    }

    fn load(&self) -> Result<Option<SystemId>, SystemIdError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(SystemId::parse(&text)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SystemIdError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn generate(&self) -> SystemId {
        match std::fs::read_to_string(&self.machine_id_path) {
            Ok(machine_id) if !machine_id.trim().is_empty() => {
                SystemId::from_machine_id(machine_id.trim())
            }
            _ => SystemId::random(),
        }
    }
}
