//! The HTTP client the operational subcommands share: where the server is, how to
//! authenticate, and how to print its answers.

use crate::output::outln;
use clap::Args;
use serde_json::Value;

/// Where the server is and how to authenticate: global, so that they go before or after the
/// subcommand (`onephase --server URL saga list` and `onephase saga list --server URL`).
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's base URL (client commands).
    #[arg(
        long,
        global = true,
        env = "ONEPHASE_SERVER",
        default_value = "http://127.0.0.1:7700",
        value_name = "URL"
    )]
    pub server: String,
    /// An API token (client commands; see `onephase token create`).
    #[arg(
        long,
        global = true,
        env = "ONEPHASE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the server's JSON instead of a table (client commands).
    #[arg(long, global = true)]
    pub json: bool,
}

/// The command line cannot be used as given (a flag missing or malformed where clap cannot
/// tell): exit status 2, as clap's own usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The server answered with an error: its problem document's title and detail, and the status,
/// which decides the process's exit status (see `main.rs`).
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: reqwest::StatusCode,
    /// The problem's title.
    pub title: String,
    /// What went wrong and what to do (the problem's detail, or the body as it came).
    pub detail: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.title, self.status, self.detail)
    }
}

impl std::error::Error for ApiError {}

/// An HTTP client of the server's API that turns problem documents into errors.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client for `args`, or why its server URL cannot be one.
    pub fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        let base = args.server.trim().trim_end_matches('/').to_owned();
        match reqwest::Url::parse(&base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {}
            _ => {
                return Err(UsageError(format!(
                    "--server {:?} is not a URL like http://127.0.0.1:7700 (it needs the http:// or https:// and a host)",
                    args.server
                ))
                .into());
            }
        }
        let Some(token) = args.token.clone().filter(|t| !t.trim().is_empty()) else {
            return Err(UsageError(
                "no API token: pass --token or set ONEPHASE_TOKEN (an admin creates one with \
                 `onephase token create --name NAME`; `onephase serve` prints the first one)"
                    .to_owned(),
            )
            .into());
        };
        Ok(Self {
            http: reqwest::Client::new(),
            base,
            token,
        })
    }

    /// Sends a request without a body; returns the JSON answer, if any.
    pub async fn send(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Option<Value>> {
        self.send_body(method, path, None, &[]).await
    }

    /// Sends JSON.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Option<Value>> {
        self.send_json_with(method, path, body, &[]).await
    }

    /// Sends JSON with extra headers.
    pub async fn send_json_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Option<Value>> {
        let bytes = serde_json::to_vec(body)?;
        self.send_body(method, path, Some(("application/json", bytes)), headers)
            .await
    }

    /// Sends a body of the given content type.
    pub async fn send_body(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Option<Value>> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some((content_type, bytes)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let response = request.send().await.map_err(|e| {
            // reqwest's own message says little ("error sending request"); its causes say
            // what happened (connection refused, a name that does not resolve, a timeout).
            let mut cause = String::new();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                cause = s.to_string();
                source = s.source();
            }
            anyhow::anyhow!(
                "cannot reach the server at {}: {}. Is `onephase serve` running there? Point --server (or ONEPHASE_SERVER) at it",
                self.base,
                if cause.is_empty() { e.to_string() } else { cause }
            )
        })?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(ApiError {
                status,
                title: problem["title"]
                    .as_str()
                    .unwrap_or("request failed")
                    .to_owned(),
                detail: problem["detail"].as_str().unwrap_or(&text).to_owned(),
            }
            .into());
        }
        if text.is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&text)?))
    }
}

/// One table cell: `-` for null, strings bare, fractions to one decimal.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() != 0.0)
            .map_or(n.to_string(), |f| format!("{f:.1}")),
        other => other.to_string(),
    }
}

fn table(rows: &[Value], columns: &[(&str, &str)]) {
    let mut lines: Vec<Vec<String>> = vec![
        columns
            .iter()
            .map(|(title, _)| (*title).to_owned())
            .collect(),
    ];
    for row in rows {
        lines.push(
            columns
                .iter()
                .map(|(_, field)| cell(&row[*field]))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in lines {
        let padded: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    }
}

/// Prints `value` as pretty JSON, or as a table of `columns` (title, field).
pub fn print(json: bool, value: &Value, columns: &[(&str, &str)]) {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        let rows = value.as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            outln!("(none)");
        } else {
            table(&rows, columns);
        }
    }
}

/// GETs the list at `path` and prints it as JSON or as a table of `columns`.
pub async fn list(server: &ServerArgs, path: &str, columns: &[(&str, &str)]) -> anyhow::Result<()> {
    let list = Client::new(server)?
        .send(reqwest::Method::GET, path)
        .await?
        .unwrap_or_default();
    print(server.json, &list, columns);
    Ok(())
}

/// Prints the server's answer as pretty JSON with `--json`, otherwise the line `summary`
/// makes of it.
pub fn answer(json: bool, value: &Value, summary: impl FnOnce(&Value) -> String) {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        outln!("{}", summary(value));
    }
}

/// `segment` percent-encoded for a URL path segment or query value.
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
