fn main() {
    eprintln!("canaryctl: not implemented yet");
    std::process::exit(2);
}
