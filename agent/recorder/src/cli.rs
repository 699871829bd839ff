//! `nodescope incident`: triggers an incident on the local agent, waits for the bundle
//! and downloads it.

use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `nodescope incident`.
#[derive(clap::Args, Debug, Clone)]
pub struct IncidentArgs {
    /// Window before the trigger, e.g. `10m` (default: the agent's recorder.default_before).
    #[arg(long)]
    pub before: Option<String>,
    /// Window after the trigger, recorded at the boosted profiling rate, e.g. `30s`.
    #[arg(long)]
    pub after: Option<String>,
    /// What you saw (goes into the bundle, redacted).
    #[arg(long)]
    pub reason: Option<String>,
    /// The agent's listen address.
    #[arg(long, default_value = "127.0.0.1:9780")]
    pub addr: String,
    /// Directory the bundle is downloaded to.
    #[arg(short = 'o', long = "output-dir", default_value = ".")]
    pub output_dir: PathBuf,
    /// Only trigger; print the id and return without waiting for the bundle.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IncidentCliError {
    #[error("cannot reach the agent at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the agent refused: HTTP {status}: {message}")]
    Agent { status: u16, message: String },
    #[error("incident {id} failed: {message}")]
    Failed { id: String, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub async fn run_incident_cli(a: &IncidentArgs) -> Result<PathBuf, IncidentCliError> {
    let base = format!("http://{}", a.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| IncidentCliError::Connect {
            url: base.clone(),
            reason: e.to_string(),
        })?;
    let mut body = serde_json::Map::new();
    for (k, v) in [
        ("before", &a.before),
        ("after", &a.after),
        ("reason", &a.reason),
    ] {
        if let Some(v) = v {
            body.insert(k.into(), serde_json::Value::String(v.clone()));
        }
    }
    body.insert("source".into(), "cli".into());
    let url = format!("{base}/api/v1/incidents");
    let conn = |e: reqwest::Error| IncidentCliError::Connect {
        url: url.clone(),
        reason: e.to_string(),
    };
    let resp = client.post(&url).json(&body).send().await.map_err(conn)?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.map_err(conn)?;
    if !status.is_success() {
        return Err(IncidentCliError::Agent {
            status: status.as_u16(),
            message: v["error"].as_str().unwrap_or("").to_string(),
        });
    }
    let id = v["id"].as_str().unwrap_or("").to_string();
    eprintln!(
        "incident {id} recording; bundle ready at about {}",
        v["ready_at"]
    );
    if a.no_wait {
        println!("{id}");
        return Ok(PathBuf::from(id));
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let l: serde_json::Value = client
            .get(&url)
            .send()
            .await
            .map_err(conn)?
            .json()
            .await
            .map_err(conn)?;
        let Some(i) = l["incidents"]
            .as_array()
            .and_then(|x| x.iter().find(|i| i["id"] == id.as_str()))
        else {
            return Err(IncidentCliError::Failed {
                id,
                message: "no longer listed (spool full?)".into(),
            });
        };
        match i["state"].as_str() {
            Some("ready") => {
                let file = i["file"].as_str().unwrap_or("bundle.tar.gz").to_string();
                let resp = client
                    .get(format!("{url}/{id}"))
                    .send()
                    .await
                    .map_err(conn)?;
                if !resp.status().is_success() {
                    return Err(IncidentCliError::Agent {
                        status: resp.status().as_u16(),
                        message: resp.text().await.unwrap_or_default(),
                    });
                }
                let b = resp.bytes().await.map_err(conn)?;
                let path = a.output_dir.join(file);
                tokio::fs::write(&path, &b)
                    .await
                    .map_err(|source| IncidentCliError::Write {
                        path: path.clone(),
                        source,
                    })?;
                if let Some(t) = i["top_finding"].as_str() {
                    eprintln!("top finding: {t}");
                }
                println!("{}", path.display());
                return Ok(path);
            }
            Some("failed") => {
                return Err(IncidentCliError::Failed {
                    id,
                    message: i["error"].as_str().unwrap_or("").to_string(),
                })
            }
            _ => {}
        }
    }
}
