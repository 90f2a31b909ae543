//! `peerfs top MOUNT`: a live view of a mount, in the terminal (ratatui).
//!
//! It reads only what the mount shows every user (`MOUNT/.peerfs/metrics`), once
//! a second, so it needs no access to the daemon or its data: anyone who can read
//! the mount can watch it. Peers are the ones the metrics export (the
//! `metrics.top_peers` busiest, and only with `metrics.peer_labels`: without it
//! the metrics name no peer, and the view shows the daemon-wide line alone),
//! sorted by runs per second.

pub mod model;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use model::{duration, PeerRow, Reading, Summary};

use crate::error::{err, Result};

const EVERY: Duration = Duration::from_secs(1);

fn read(path: &Path) -> Result<Reading> {
    std::fs::read_to_string(path)
        .map(|t| Reading::parse(&t))
        .map_err(|e| {
            err!(
                e.raw_os_error().unwrap_or(libc::EIO),
                "cannot read {}: {e}: is a peerfs daemon serving that mount?",
                path.display()
            )
            .with_source(e)
        })
}

/// Runs the view until `q` (or Esc, or Ctrl-C). Fails before touching the
/// terminal when the mount shows no metrics.
pub fn run(mount: &Path) -> Result<()> {
    let path: PathBuf = mount.join(".peerfs").join("metrics");
    let mut now = read(&path)?;
    let mut prev: Option<(Reading, Instant)> = None;
    let mut at = Instant::now();
    let mut problem: Option<String> = None;
    let mut term = ratatui::try_init()
        .map_err(|e| err!(libc::EIO, "cannot set up the terminal: {e}").with_source(e))?;
    let r = (|| -> std::io::Result<()> {
        loop {
            let secs = prev
                .as_ref()
                .map(|(_, t)| at.duration_since(*t).as_secs_f64())
                .unwrap_or(0.0);
            let (summary, rows) = model::view(prev.as_ref().map(|(r, _)| r), &now, secs);
            term.draw(|f| draw(f, mount, &summary, &rows, problem.as_deref()))?;
            let next = at + EVERY;
            while Instant::now() < next {
                if event::poll(next.saturating_duration_since(Instant::now()))? {
                    if let Event::Key(k) = event::read()? {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if k.kind == KeyEventKind::Press
                            && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                        {
                            return Ok(());
                        }
                    }
                }
            }
            match read(&path) {
                Ok(r) => {
                    prev = Some((std::mem::replace(&mut now, r), at));
                    problem = None;
                }
                Err(e) => problem = Some(e.message),
            }
            at = Instant::now();
        }
    })();
    ratatui::restore();
    r.map_err(|e| err!(libc::EIO, "terminal: {e}").with_source(e))
}

fn draw(f: &mut Frame, mount: &Path, s: &Summary, rows: &[PeerRow], problem: Option<&str>) {
    let [head, table, foot] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let mib = s.memory_bytes as f64 / (1 << 20) as f64;
    let lines = vec![
        Line::from(format!(
            "runs/s {:.1}   runs {}   queued {}   denied {}",
            s.runs_per_s, s.runs, s.queued, s.denials
        )),
        Line::from(format!(
            "commits/s {:.1}   commit p99 {}   peers {} ({} open)   memory {mib:.1} MiB",
            s.commits_per_s,
            duration(s.commit_p99),
            s.peers,
            s.open_peers
        )),
    ];
    let title = format!(" peerfs top {} ", mount.display());
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        head,
    );
    let header = Row::new([
        "PEER", "RUNS/S", "RUNS", "P50", "P99", "QUEUED", "DENIED", "LIMIT", "ERROR",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let body = rows.iter().map(|r| {
        Row::new([
            r.peer.clone(),
            format!("{:.1}", r.runs_per_s),
            r.runs.to_string(),
            duration(r.p50),
            duration(r.p99),
            r.queued.to_string(),
            r.denied.to_string(),
            r.limit.to_string(),
            r.errors.to_string(),
        ])
    });
    let widths = [
        Constraint::Min(16),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(6),
    ];
    let title = if rows.is_empty() {
        " peers: none in the metrics (the daemon exports them with metrics.peer_labels = true) "
    } else {
        " peers, busiest first "
    };
    f.render_widget(
        Table::new(body, widths)
            .header(header)
            .block(Block::bordered().title(title)),
        table,
    );
    let foot_text = match problem {
        Some(p) => p.to_string(),
        None => {
            "q quits · refreshed every second · p50/p99: run durations since the daemon started"
                .into()
        }
    };
    f.render_widget(Paragraph::new(foot_text), foot);
}
