//! Resource attributes: who produced the telemetry (this node, this agent).

/// Ordered `(key, value)` attributes using OpenTelemetry semantic-convention keys
/// (`service.name`, `host.name`, `host.id`, `os.type`, `k8s.node.name`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resource {
    pub attributes: Vec<(String, String)>,
}

impl Resource {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
    }
}
