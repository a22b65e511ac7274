//! Rebuilds the crate when a file in `migrations/` is added or changed: `sqlx::migrate!`
//! embeds that directory at compile time, and cargo cannot see a new file there by itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
