//! The agent's API is strict and bounded, tried from outside as a client
//! would: a misspelt field is refused by name (not run with a default), a
//! client that trickles its handshake is cut at one deadline for the whole
//! request, a flood of clients is held to the configured number of
//! connections, and every refusal is logged with the peer and counted in the
//! host's facts. Every change and every refusal is in the agents' audit
//! trail with who asked and what came of it, and the agent's log lines of a
//! migration carry its id and its run's.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::lab::Lab;
use serde_json::Value;

/// A connection to `host`'s API over the operator's mutual TLS.
fn operator_stream(lab: &Lab, host: &str) -> impl Read + Write {
    let inventory = vmig::inventory::Inventory::load(&lab.inventory()).unwrap();
    let tls = vmig_backend::pki::client_config(&inventory.operator).unwrap();
    let (ip, port) = lab.address(host);
    let tcp = TcpStream::connect((ip, port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    vmig_backend::pki::connect(tls, host, tcp).unwrap()
}

/// One raw request line over the operator's mutual TLS; the answer line.
fn raw_request(lab: &Lab, host: &str, line: &str) -> Value {
    let mut stream = operator_stream(lab, host);
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    stream.flush().unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

/// The agent's log: one JSON object a line (the lab's agents log JSON).
fn agent_log(lab: &Lab, host: &str) -> Vec<Value> {
    std::fs::read_to_string(lab.host_dir(host).join("agent.log"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}")))
        .collect()
}

/// The events whose message has `needle`.
fn said<'a>(log: &'a [Value], needle: &str) -> Vec<&'a Value> {
    log.iter()
        .filter(|event| event["message"].as_str().is_some_and(|m| m.contains(needle)))
        .collect()
}

fn refused(lab: &Lab, host: &str) -> Value {
    let answer = raw_request(lab, host, r#"{"v":1,"op":"host"}"#);
    answer["result"]["api_refused"].clone()
}

#[test]
fn a_misspelt_field_is_refused_by_name_and_logged() {
    let lab = Lab::up_hosts(1, &[]);
    lab.create("vm1", "hostA", "128M", "idle verify=0 sleep=1");
    let line = r#"{"v":1,"op":"migrate","name":"vm1","target":{"name":"hostB","address":"127.0.0.1:1"},"options":{"downtime_limit_ms":50,"bandwidth_limit":null,"timeout_s":600,"timeout_action":"cancel","streems":9,"streams":2,"auto_converge":true}}"#;
    let answer = raw_request(&lab, "hostA", line);
    assert_eq!(answer["status"], 400, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("unknown field `streems`"), "{error}");
    // Nothing started: the VM is where it was, not migrating.
    let vm = lab.vm("vm1");
    assert_eq!(
        (vm["host"].as_str(), vm["state"].as_str()),
        (Some("hostA"), Some("running")),
        "{vm}"
    );
    let log = agent_log(&lab, "hostA");
    let refusal = said(&log, "refused a request");
    assert!(
        refusal.iter().any(|e| e["by"] == "operator"
            && e["role"] == "Operator"
            && e["level"] == "warn"
            && e["from"].as_str().is_some_and(|f| f.starts_with("127."))
            && e["message"].as_str().unwrap().contains("streems")),
        "{log:#?}"
    );
    assert_eq!(refused(&lab, "hostA")["requests"], 1);

    // An operator of another cluster's CA: refused by TLS, and logged.
    let other = tempfile::tempdir().unwrap();
    let pki_dir = other.path().to_str().unwrap();
    lab.ok(&["pki", "init", "--dir", pki_dir, "--cluster", "elsewhere"]);
    lab.ok(&["pki", "issue", "--dir", pki_dir, "--operator", "mallory"]);
    let identity = vmig_backend::pki::Identity {
        cert: other.path().join("mallory.pem"),
        key: other.path().join("mallory.key"),
        ca: lab.dir_path().join("pki/ca.pem"),
    };
    let tls = vmig_backend::pki::client_config(&identity).unwrap();
    let (ip, port) = lab.address("hostA");
    let tcp = TcpStream::connect((ip, port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server's refusal of our certificate comes with the first read.
    let refused_tls = vmig_backend::pki::connect(tls, "hostA", tcp).map(|mut stream| {
        let _ = stream.write_all(b"{\"v\":1,\"op\":\"host\"}\n");
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).map(|_| answer)
    });
    assert!(
        !matches!(refused_tls, Ok(Ok(ref answer)) if answer.contains("\"status\":200")),
        "a foreign operator was served: {refused_tls:?}"
    );
    let log = wait_for_log(&lab, "hostA", "refused a connection");
    assert!(
        said(&log, "refused a connection")
            .iter()
            .any(|e| e["from"].as_str().is_some_and(|f| f.starts_with("127."))),
        "{log:#?}"
    );
    assert_eq!(refused(&lab, "hostA")["tls"], 1);
}

#[test]
fn a_request_past_the_size_limit_is_refused_and_counted() {
    let lab = Lab::up_hosts(1, &[]);
    let mut stream = operator_stream(&lab, "hostA");
    // Exactly the limit and no end of line: the agent reads it all, finds
    // no request in it, and says why (nothing is left unread to reset the
    // connection before the answer arrives).
    let limit = vmig_backend::api::MAX_REQUEST;
    let head = r#"{"v":1,"op":"host","pad":""#;
    let mut line = head.as_bytes().to_vec();
    line.resize(limit, b'x');
    stream.write_all(&line).unwrap();
    stream.flush().unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    assert_eq!(answer["status"], 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains(&format!("at most {limit} bytes")),
        "{answer}"
    );
    assert_eq!(refused(&lab, "hostA")["requests"], 1);
    let log = wait_for_log(&lab, "hostA", "refused a request");
    assert!(
        said(&log, "refused a request").iter().any(|e| e["by"] == "operator"),
        "{log:#?}"
    );
}

/// The agent's log once it has an event whose message has `needle` (10 s
/// at most).
fn wait_for_log(lab: &Lab, host: &str, needle: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent_log(lab, host);
        if !said(&log, needle).is_empty() || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_trickles_its_handshake_is_cut_at_one_deadline() {
    let lab = Lab::up_hosts(1, &[]);
    let (ip, port) = lab.address("hostA");
    let mut slow = TcpStream::connect((ip, port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // A TLS record header that announces more than is ever sent: the
    // agent's TLS waits for the rest, one byte every 2 s (each read well
    // within a per-read timeout).
    let start = Instant::now();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    let mut next_byte = start + Duration::from_secs(2);
    let cut = loop {
        let mut byte = [0u8; 1];
        match slow.read(&mut byte) {
            Ok(0) => break start.elapsed(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break start.elapsed(),
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the agent kept the connection"
        );
        if Instant::now() >= next_byte {
            let _ = slow.write_all(&[0]);
            next_byte += Duration::from_secs(2);
        }
    };
    assert!(
        cut >= Duration::from_secs(9) && cut < Duration::from_secs(15),
        "cut after {cut:?}, not at the 10 s deadline"
    );
    let log = agent_log(&lab, "hostA");
    assert_eq!(said(&log, "no request within 10 s").len(), 1, "{log:#?}");
    assert_eq!(refused(&lab, "hostA")["timed_out"], 1);
    // And it answers others.
    assert_eq!(raw_request(&lab, "hostA", r#"{"v":1,"op":"list_vms"}"#)["status"], 200);
}

#[test]
fn an_agent_refuses_to_start_with_a_certificate_not_its_own() {
    let lab = Lab::up_hosts(2, &[]);
    let config_of = |host: &str| -> toml::Value {
        toml::from_str(&std::fs::read_to_string(lab.host_dir(host).join("agent.toml")).unwrap()).unwrap()
    };
    let inventory = vmig::inventory::Inventory::load(&lab.inventory()).unwrap();
    let others = [
        (config_of("hostB")["tls"].clone(), "host hostB's certificate"),
        (
            toml::Value::try_from(&inventory.operator).unwrap(),
            "operator operator's certificate",
        ),
    ];
    for (tls, whose) in others {
        let mut config = config_of("hostA");
        config["tls"] = tls;
        let path = lab.dir_path().join("wrong.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let out = lab.run(&["agent", "--config", path.to_str().unwrap()]);
        let stderr = common::lab::text(&out.stderr);
        assert_eq!(out.status.code(), Some(9), "{stderr}");
        assert!(
            stderr.contains(whose) && stderr.contains("vmig pki issue --host hostA"),
            "{stderr}"
        );
    }
}

#[test]
fn a_certificate_of_the_ca_with_an_unknown_role_is_refused_with_a_reason() {
    let lab = Lab::up_hosts(1, &[]);
    let pki_dir = lab.dir_path().join("pki");
    let ca_pem = std::fs::read_to_string(pki_dir.join("ca.pem")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki_dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "auditor");
    params.distinguished_name.push(rcgen::DnType::CommonName, "eve");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("eve.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("eve.key"), key.serialize_pem()).unwrap();
    let mut inventory: toml::Value = toml::from_str(&std::fs::read_to_string(lab.inventory()).unwrap()).unwrap();
    inventory["operator"]["cert"] = dir.path().join("eve.pem").display().to_string().into();
    inventory["operator"]["key"] = dir.path().join("eve.key").display().to_string().into();
    let path = dir.path().join("vmig.toml");
    std::fs::write(&path, toml::to_string(&inventory).unwrap()).unwrap();
    let out = std::process::Command::new(common::VMIG)
        .arg("--inventory")
        .arg(&path)
        .args(["host", "cordon", "hostA"])
        .output()
        .unwrap();
    let stderr = common::lab::text(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(stderr.contains("refuses the certificate"), "{stderr}");
    let log = wait_for_log(&lab, "hostA", "refuses the certificate");
    assert!(
        said(&log, "refuses the certificate").iter().all(|e| e["message"]
            .as_str()
            .unwrap()
            .starts_with("refused a connection")
            && e["from"].is_string()),
        "{log:#?}"
    );
    // Nothing was done.
    assert!(lab.ok(&["hosts"]).contains("up"));
}

#[test]
fn a_flood_of_clients_is_held_to_the_configured_connections_and_the_agent_answers_after() {
    let lab = Lab::up_hosts(2, &[]);
    // hostA's agent again, serving at most 4 connections.
    let pid = lab.agent_pid("hostA");
    // SAFETY: kill(2) on the lab's agent process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    // SAFETY: signal 0 only asks whether the process is there.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "the agent did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let path = lab.host_dir("hostA").join("agent.toml");
    let mut config: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let table = config.as_table_mut().unwrap();
    let limits = table
        .entry("limits")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    limits
        .as_table_mut()
        .unwrap()
        .insert("max_api_connections".into(), toml::Value::Integer(4));
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    lab.restart_agents();

    let (ip, port) = lab.address("hostA");
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect((ip, port)).unwrap()).collect();
    // The fifth is closed at once, not held to the 10 s deadline.
    let mut fifth = TcpStream::connect((ip, port)).unwrap();
    fifth.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let asked = Instant::now();
    let mut byte = [0u8; 1];
    assert!(
        matches!(fifth.read(&mut byte), Ok(0)),
        "a connection past the bound is closed"
    );
    assert!(asked.elapsed() < Duration::from_secs(5), "closed as it arrived");
    let log = wait_for_log(&lab, "hostA", "4 connections are open");
    assert!(
        said(&log, "4 connections are open")
            .iter()
            .all(|e| e["from"].is_string()),
        "{log:#?}"
    );
    // Their places come back when they go, and the agent answers again.
    drop(idle);
    drop(fifth);
    let deadline = Instant::now() + Duration::from_secs(15);
    let busy = loop {
        let answer = std::panic::catch_unwind(|| refused(&lab, "hostA"));
        if let Ok(refused) = answer {
            break refused["busy"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "the agent never answered again");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(busy >= 1, "the refusal is counted: {busy}");
}

/// The audit trail of the lab, as `vmig audit --json` lists it.
fn audit(lab: &Lab, extra: &[&str]) -> Vec<Value> {
    serde_json::from_str(&lab.ok(&[&["audit", "--json"][..], extra].concat())).unwrap()
}

#[test]
fn every_change_and_refusal_is_audited_and_a_migrations_log_lines_name_it() {
    let lab = Lab::up_hosts(2, &[]);
    lab.create("vm1", "hostA", "128M", "idle verify=0 sleep=1");
    let moved = common::lab::migrated(&lab.run(&["migrate", "vm1", "hostB", "--json"]));
    let id = moved["id"].as_str().unwrap().to_string();
    lab.ok(&["vm", "stop", "vm1"]);
    // Reads are not recorded; a refused request is, whatever it asked.
    lab.ok(&["vms"]);
    let answer = raw_request(
        &lab,
        "hostB",
        r#"{"v":1,"op":"incoming_state","name":"vm1","id":"m-x"}"#,
    );
    assert_eq!(answer["status"], 403, "{answer}");

    let trail = audit(&lab, &[]);
    let find = |host: &str, request: &str| -> Vec<&Value> {
        trail
            .iter()
            .filter(|e| e["host"] == host && e["request"] == request)
            .collect()
    };
    let created = find("hostA", "create_vm");
    assert_eq!(created.len(), 1, "{trail:#?}");
    assert_eq!(
        (
            &created[0]["by"],
            &created[0]["role"],
            &created[0]["vm"],
            &created[0]["status"]
        ),
        (&"operator".into(), &"operator".into(), &"vm1".into(), &200.into())
    );
    assert!(created[0]["from"].as_str().is_some_and(|f| f.starts_with("127.")));
    // The migration: taken (202), then its outcome, with one migration id
    // and the run of the `vmig migrate` that asked.
    let migrate = find("hostA", "migrate");
    assert_eq!(migrate.len(), 2, "{trail:#?}");
    assert_eq!(
        (&migrate[0]["status"], &migrate[1]["status"]),
        (&202.into(), &200.into())
    );
    let run = migrate[0]["run"].as_str().expect("the run is recorded").to_string();
    assert!(run.starts_with("r-"), "{run}");
    for entry in &migrate {
        assert_eq!(
            (entry["migration"].as_str(), entry["run"].as_str()),
            (Some(&*id), Some(&*run))
        );
        assert_eq!(
            (&entry["by"], &entry["vm"], &entry["peer"]),
            (&"operator".into(), &"vm1".into(), &"hostB".into())
        );
    }
    // The target's side was asked by the source's host certificate.
    let prepared = find("hostB", "prepare_incoming");
    assert_eq!(prepared.len(), 1, "{trail:#?}");
    assert_eq!(
        (
            &prepared[0]["by"],
            &prepared[0]["role"],
            &prepared[0]["peer"],
            &prepared[0]["status"]
        ),
        (&"hostA".into(), &"host".into(), &"hostA".into(), &200.into())
    );
    assert_eq!(prepared[0]["migration"].as_str(), Some(&*id));
    assert_eq!(find("hostB", "finish_incoming").len(), 1, "{trail:#?}");
    assert_eq!(find("hostB", "stop_vm")[0]["status"], 200);
    let refused = find("hostB", "incoming_state");
    assert_eq!(refused.len(), 1, "{trail:#?}");
    assert_eq!(
        (&refused[0]["status"], &refused[0]["code"]),
        (&403.into(), &"forbidden".into())
    );
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("may not make this request")
    );
    for read in ["list_vms", "host", "show_vm", "audit"] {
        assert!(
            trail.iter().all(|e| e["request"] != read),
            "{read} recorded: {trail:#?}"
        );
    }
    // The filters.
    let by_host = audit(&lab, &["--by", "hostA"]);
    assert!(!by_host.is_empty() && by_host.iter().all(|e| e["by"] == "hostA" && e["host"] == "hostB"));
    assert!(audit(&lab, &["--run", &run]).iter().all(|e| e["run"] == run.as_str()));
    assert_eq!(audit(&lab, &["--host", "hostA", "--vm", "vm1"]).len(), 3);
    assert!(
        lab.ok(&["audit"])
            .lines()
            .any(|l| l.contains("migrate") && l.contains(&id) && l.contains(" 202 "))
    );

    // Every log line of the migration names it, its VM and (on the source)
    // its run; the log is JSON, one event a line.
    let source = agent_log(&lab, "hostA");
    let lines: Vec<&Value> = source.iter().filter(|e| e["migration"] == id.as_str()).collect();
    assert!(lines.len() >= 4, "{source:#?}");
    for line in &lines {
        assert_eq!(
            (&line["vm"], &line["run"], &line["host"]),
            (&"vm1".into(), &run.as_str().into(), &"hostA".into()),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "phase changed" && l["phase"] == "copying"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"].as_str().unwrap().starts_with("migration ended"))
    );
    let target = agent_log(&lab, "hostB");
    let arrival: Vec<&Value> = target.iter().filter(|e| e["migration"] == id.as_str()).collect();
    assert!(
        arrival
            .iter()
            .any(|l| l["message"] == "arrival prepared" && l["source"] == "hostA"),
        "{target:#?}"
    );
    assert!(
        arrival
            .iter()
            .any(|l| l["message"] == "arrival ended" && l["event"] == "Arrived"),
        "{target:#?}"
    );
}
