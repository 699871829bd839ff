//! Network probe object and struct mirrors.
