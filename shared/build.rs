// Migrations are embedded at compile time (refinery::embed_migrations!):
// a new file in migrations/ must rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
