fn main() { eprintln!("rtlink-server: not built yet"); std::process::exit(1) }
