//! Summary tables (placeholder, filled in next).
