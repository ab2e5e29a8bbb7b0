//! `weir-cni`: reads the CNI environment and stdin, writes the result or error JSON to stdout.
fn main() {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let read = std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin);
    let outcome = match read {
        Ok(_) => weir_cni::run(&env, &stdin),
        Err(e) => Err(weir_cni::CniError::Io(format!("reading stdin: {e}"))),
    };
    let (text, code) = weir_cni::render(&stdin, outcome);
    if !text.is_empty() {
        println!("{text}");
    }
    std::process::exit(code);
}
