//! A late-bound registry of shared services between components.
//!
//! Components are built one after another from the list in the agent's `app.rs`. Some need
//! a handle another component provides (the flight recorder feeds on the profiler's
//! samples; the profiler obeys the recorder's request for a higher rate during an
//! incident). Instead of building them in a fixed dependency order, a component *provides*
//! a service (`Arc<dyn Trait>`) while it is built and *looks it up* when it needs it, at
//! run time: by then every component has been built. A service that was never provided
//! (its component is disabled) is simply `None`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

/// Shared, cloneable registry keyed by the service's type (`Arc<dyn SampleSink>`, ...).
#[derive(Clone, Default)]
pub struct Services(Arc<RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>);

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("count", &self.0.read().len())
            .finish()
    }
}

impl Services {
    /// Makes `service` available as `Arc<T>` (replacing an earlier one of the same type).
    pub fn provide<T: ?Sized + Send + Sync + 'static>(&self, service: Arc<T>) {
        self.0
            .write()
            .insert(TypeId::of::<Arc<T>>(), Box::new(service));
    }

    /// The service of type `Arc<T>`, if a component provided one.
    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.0
            .read()
            .get(&TypeId::of::<Arc<T>>())
            .and_then(|b| b.downcast_ref::<Arc<T>>())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Greeter: Send + Sync {
        fn hello(&self) -> &'static str;
    }
    struct En;
    impl Greeter for En {
        fn hello(&self) -> &'static str {
            "hello"
        }
    }

    #[test]
    fn provide_then_get_by_trait_object_type() {
        let s = Services::default();
        assert!(s.get::<dyn Greeter>().is_none());
        let later = s.clone();
        s.provide::<dyn Greeter>(Arc::new(En));
        assert_eq!(later.get::<dyn Greeter>().unwrap().hello(), "hello");
        s.provide(Arc::new(7u32));
        assert_eq!(*s.get::<u32>().unwrap(), 7);
        assert!(s.get::<u64>().is_none());
    }
}
