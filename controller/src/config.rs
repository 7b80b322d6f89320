//! Controller configuration: built-in defaults, then the TOML file, then flags
//! (STYLE rule 8). Unknown keys are refused with their name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use metalbus_agent::config::LogFormat;
use serde::Deserialize;

/// The controller's settings, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    /// Where the embedded MQTT broker listens.
    pub mqtt_listen: SocketAddr,
    /// MQTT topic prefix.
    pub prefix: String,
    pub http_listen: SocketAddr,
    pub log_format: LogFormat,
    /// Also run an agent for this host inside the controller.
    pub local_agent: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("metalbus-data"),
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            prefix: metalbus_protocol::DEFAULT_PREFIX.to_string(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            log_format: LogFormat::Text,
            local_agent: false,
        }
    }
}

/// The file's keys, every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerFile {
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub mqtt: MqttSection,
    #[serde(default)]
    pub http: HttpSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    pub listen: Option<SocketAddr>,
    pub prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub listen: Option<SocketAddr>,
}

impl ControllerFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Lays the file's values over `cfg`.
    pub fn apply(self, cfg: &mut ControllerConfig) {
        set(&mut cfg.data_dir, self.data_dir);
        set(&mut cfg.log_format, self.log_format);
        set(&mut cfg.mqtt_listen, self.mqtt.listen);
        set(&mut cfg.prefix, self.mqtt.prefix);
        set(&mut cfg.http_listen, self.http.listen);
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/controller.toml");
        let mut cfg = ControllerConfig::default();
        ControllerFile::load(&path).unwrap().apply(&mut cfg);
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/metalbus"));
        assert_eq!(cfg.prefix, "metalbus/v1");
    }

    #[test]
    fn file_overrides_defaults_and_typos_are_named() {
        let file: ControllerFile = toml::from_str(
            "data_dir = \"/srv/mb\"\n[mqtt]\nlisten = \"0.0.0.0:1884\"\n[http]\nlisten = \"[::1]:9000\"\n",
        )
        .unwrap();
        let mut cfg = ControllerConfig::default();
        file.apply(&mut cfg);
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/mb"));
        assert_eq!(cfg.mqtt_listen.port(), 1884);
        assert_eq!(cfg.http_listen.to_string(), "[::1]:9000");

        let err = toml::from_str::<ControllerFile>("[http]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
        let err = toml::from_str::<ControllerFile>("[http]\nlisten = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("invalid socket address"), "{err}");
    }
}
