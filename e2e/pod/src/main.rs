//! `weir-lab-pod pause` | `weir-lab-pod serve --name NAME [--tcp PORT]... [--udp PORT]...`
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("pause") => weir_lab_pod::pause(),
        Some("serve") => match parse_serve(&args[1..])
            .and_then(|(name, tcp, udp)| weir_lab_pod::serve(&name, &tcp, &udp).map_err(|e| e.to_string()))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weir-lab-pod serve: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: weir-lab-pod pause | serve --name NAME [--tcp PORT]... [--udp PORT]...");
            ExitCode::from(2)
        }
    }
}

fn parse_serve(args: &[String]) -> Result<(String, Vec<u16>, Vec<u16>), String> {
    let (mut name, mut tcp, mut udp) = (None, Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let port = || value.parse::<u16>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--name" => name = Some(value.clone()),
            "--tcp" => tcp.push(port()?),
            "--udp" => udp.push(port()?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok((name.ok_or("--name is required")?, tcp, udp))
}
