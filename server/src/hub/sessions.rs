//! This node's sessions: opening and resuming them within the caps, attaching transports and
//! probes, and ending them (retiring their presence, remembering how they ended).

use super::*;

#[derive(Default)]
pub(super) struct Sessions {
    by_id: HashMap<String, Arc<Session>>,
    by_token: HashMap<String, Arc<Session>>,
    /// User id → the user's sessions, oldest first (at most `--max-sessions-per-user`).
    per_user: HashMap<String, Vec<Arc<Session>>>,
    /// Client address → sessions opened from it (each session keeps its own address: no map
    /// from session to address, which cost about 100 bytes per session).
    per_ip: HashMap<IpAddr, usize>,
}

impl Sessions {
    fn insert(&mut self, session: &Arc<Session>) {
        self.by_id.insert(session.id.clone(), session.clone());
        self.by_token
            .insert(session.resume_token.clone(), session.clone());
        self.per_user
            .entry(session.claims.sub.clone())
            .or_default()
            .push(session.clone());
        if let Some(ip) = session.ip {
            *self.per_ip.entry(ip).or_default() += 1;
        }
    }

    fn remove(&mut self, session: &Session) {
        self.by_id.remove(&session.id);
        self.by_token.remove(&session.resume_token);
        if let Some(list) = self.per_user.get_mut(&session.claims.sub) {
            list.retain(|s| s.id != session.id);
            if list.is_empty() {
                self.per_user.remove(&session.claims.sub);
            }
        }
        if let Some(ip) = session.ip {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Why no session was opened.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionRefusal {
    /// `--max-sessions` in total (503).
    Total,
    /// `--max-sessions-per-ip` from this address (429).
    PerIp,
    /// `--max-sessions-per-user`, every one of them attached to a transport (429).
    PerUser,
}

impl Hub {
    /// Resumes the session of `resume` if it exists and belongs to this user, else opens a new
    /// one. Returns the session and whether it was resumed. On a cluster node, `node` prefixes
    /// new resume tokens (`{node}.{secret}`) so any node can tell who holds the session.
    ///
    /// Sessions outlive their transport for the resume window, so detached ones count toward
    /// every cap. A user at their cap who opens another session ends their own oldest detached
    /// one (it could only be resumed by that same user); with none detached, it is refused.
    pub fn open_session(
        self: &Arc<Self>,
        claims: Claims,
        resume: Option<&str>,
        node: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(Arc<Session>, bool), SessionRefusal> {
        let mut sessions = self.sessions.lock();
        if let Some(token) = resume {
            if let Some(s) = sessions.by_token.get(token) {
                if s.claims.sub == claims.sub && !s.lock().ended {
                    // The client came back with a (possibly newer) token: from now on the
                    // session acts with its claims (name, rooms, expiry).
                    s.claims.replace(claims);
                    return Ok((s.clone(), true));
                }
            }
        }
        let held = sessions.per_user.get(&claims.sub).map_or(0, Vec::len);
        let evict = if held >= self.config.max_sessions_per_user {
            let oldest_detached = sessions.per_user.get(&claims.sub).and_then(|list| {
                list.iter()
                    .find(|s| s.lock().attached_kind().is_none())
                    .cloned()
            });
            match oldest_detached {
                Some(s) => Some(s),
                None => return Err(SessionRefusal::PerUser),
            }
        } else {
            None
        };
        if evict.is_none() && sessions.by_id.len() >= self.config.max_sessions {
            return Err(SessionRefusal::Total);
        }
        if let Some(ip) = ip {
            let from_ip = sessions.per_ip.get(&ip).copied().unwrap_or(0);
            let freed = evict.as_ref().is_some_and(|e| e.ip == Some(ip));
            if from_ip >= self.config.max_sessions_per_ip && !freed {
                return Err(SessionRefusal::PerIp);
            }
        }
        if let Some(old) = evict {
            if self.retire(&mut sessions, &old, CloseCode::SESSION_EXPIRED) {
                tracing::debug!(session = %old.id, user = %old.claims.sub, "oldest detached session of a user at the cap ended");
                let hub = self.clone();
                tokio::spawn(
                    async move { hub.finish_ending(&old, CloseCode::SESSION_EXPIRED).await },
                );
            }
        }
        let now = Instant::now();
        let secret = random_token(32);
        let resume_token = match node {
            Some(node) => format!("{node}.{secret}"),
            None => secret,
        };
        let session = Arc::new(Session::new(
            random_token(12),
            ip,
            resume_token,
            claims,
            OutboxLimits {
                max_frames: self.config.outbox_max_frames.max(8),
                max_bytes: self
                    .config
                    .outbox_max_bytes
                    .max(self.config.max_frame_bytes * 2),
            },
            TokenBucket::new(self.config.rate_per_sec, self.config.rate_burst, now),
            self.metrics.clone(),
        ));
        sessions.insert(&session);
        self.metrics
            .sessions
            .store(sessions.by_id.len() as u64, Relaxed);
        Ok((session, false))
    }

    /// Marks a session ended with `code` and forgets it (the synchronous half of ending it).
    /// False if it had already ended.
    fn retire(&self, sessions: &mut Sessions, session: &Session, code: CloseCode) -> bool {
        let attached = {
            let mut st = session.lock();
            if st.ended {
                return false;
            }
            st.ended = true;
            st.attached_kind()
        };
        sessions.remove(session);
        // A WebSocket client gets the close on the connection that carries both its directions.
        // A long-polling or SSE one may not have heard (between polls, a send crossing the close
        // on the stream); one with no connection has not, which matters when the close is
        // terminal (a non-terminal one means "new session", as `unknown_session` does).
        // Remembered before the session stops being found, so no request sees neither.
        let unheard = match attached {
            Some(TransportKind::WebSocket) => false,
            Some(_) => true,
            None => code.action() == CloseAction::Terminal,
        };
        if unheard {
            self.ended_sessions.lock().insert(
                &session.resume_token,
                &session.claims.sub,
                code,
                Instant::now(),
            );
        }
        self.metrics
            .sessions
            .store(sessions.by_id.len() as u64, Relaxed);
        true
    }

    pub fn session_by_token(&self, token: &str) -> Option<Arc<Session>> {
        self.sessions.lock().by_token.get(token).cloned()
    }

    /// The close code of the session of `token` if it ended recently while its client may not
    /// have been told: a poll is answered with that close, a send is dropped (the close reaches
    /// the client on its downstream), instead of `unknown_session`.
    pub fn ended_session(&self, token: &str) -> Option<CloseCode> {
        self.ended_sessions
            .lock()
            .get(token, Instant::now())
            .map(|e| e.code)
    }

    /// The terminal close code of `user`'s session of `token` if it ended for good recently
    /// while its client may not have been told: an open that resumes it is answered with that
    /// close instead of a new session (after a 4013 the client must stop, not start over).
    pub fn ended_for_good(&self, token: &str, user: &str) -> Option<CloseCode> {
        let mut ended = self.ended_sessions.lock();
        let e = ended.get(token, Instant::now())?;
        (e.user == user && e.code.action() == CloseAction::Terminal).then_some(e.code)
    }

    pub fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().by_id.values().cloned().collect()
    }

    pub fn welcome(&self, session: &Session, resumed: bool) -> ServerFrame {
        let c = &self.config;
        ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            session: session.id.clone(),
            resume_token: session.resume_token.clone(),
            resumed,
            ping_interval_ms: c.ping_interval.as_millis() as u64,
            user: UserInfo {
                id: session.claims.sub.clone(),
                name: session.claims.name(),
            },
            limits: Limits {
                max_frame_bytes: c.max_frame_bytes as u64,
                rate_per_sec: c.rate_per_sec,
                burst: c.rate_burst,
                max_rooms: c.max_rooms,
                resume_window_ms: c.resume_window.as_millis() as u64,
                dedupe_window_ms: c.dedupe_window.as_millis() as u64,
                max_batch_bytes: max_batch_bytes(c.max_frame_bytes) as u64,
                publish_bytes_per_sec: u64::from(c.publish_bytes_per_sec),
                publish_bytes_burst: u64::from(self.publish_budget.burst()),
            },
        }
    }

    /// Attaches a transport to a session (superseding the old one) and queues `welcome`. If
    /// the presence grace had run out, the session's presence is restored. A resumed session
    /// leaves the rooms its (possibly newer) claims no longer allow.
    pub fn attach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        kind: TransportKind,
        guard: ConnGuard,
        resumed: bool,
    ) -> Attached {
        let welcome = self.welcome(session, resumed);
        let attached = session.attach(kind, guard, &welcome);
        // Session ids are public; resume tokens and tickets are never logged.
        tracing::debug!(session = %session.id, user = %session.claims.sub, transport = kind.as_str(), resumed, "transport attached");
        self.after_attach(session, resumed);
        attached
    }

    fn after_attach(self: &Arc<Self>, session: &Arc<Session>, resumed: bool) {
        let rejoin = std::mem::take(&mut session.lock().presence_left);
        if rejoin || resumed {
            let hub = self.clone();
            let session = session.clone();
            tokio::spawn(async move {
                if resumed {
                    hub.drop_forbidden_rooms(&session).await;
                }
                if rejoin {
                    hub.rejoin_presence(&session).await;
                }
            });
        }
    }

    /// Opens a probe of the session of `resume` (see [`Session::open_probe`]): `welcome` on the
    /// probe, the session stays where it is until `switch`. A probe of a session this node does
    /// not hold (unknown, ended, another user's, or another node's) is refused with the code to
    /// close the probe with; the client tries again later and its session is untouched.
    pub fn open_probe(
        self: &Arc<Self>,
        claims: Claims,
        resume: &str,
        kind: TransportKind,
        guard: ConnGuard,
    ) -> Result<(Arc<Session>, Attached), CloseCode> {
        let session = self
            .session_by_token(resume)
            .filter(|s| s.claims.sub == claims.sub && !s.lock().ended)
            .ok_or(CloseCode::SESSION_EXPIRED)?;
        session.claims.replace(claims);
        let welcome = self.welcome(&session, true);
        let attached = session.open_probe(kind, guard, &welcome);
        tracing::debug!(session = %session.id, transport = kind.as_str(), "probe opened");
        Ok((session, attached))
    }

    /// `switch` on a probe: the session moves to it (see [`Session::commit_probe`]).
    pub fn commit_probe(self: &Arc<Self>, session: &Arc<Session>) {
        if session.commit_probe() {
            tracing::debug!(session = %session.id, "switched to the probe");
            self.after_attach(session, true);
        }
    }

    /// The transport `gen` of `session` ended. Starts the presence grace and resume window.
    pub fn detached(self: &Arc<Self>, session: &Arc<Session>, gen: u64) {
        if !session.detach(gen) {
            return;
        }
        self.schedule_expiry(session, gen);
    }

    /// Closes a session's transport at once with `code` and starts its grace timers.
    pub fn force_close(self: &Arc<Self>, session: &Arc<Session>, code: CloseCode) {
        if let Some(gen) = session.force_close(code) {
            self.schedule_expiry(session, gen);
        }
    }

    fn schedule_expiry(self: &Arc<Self>, session: &Arc<Session>, gen: u64) {
        let hub = Arc::downgrade(self);
        let session = session.clone();
        let grace = self.config.presence_grace;
        let window = self.config.resume_window;
        tokio::spawn(async move {
            // Still detached since `gen` ended: no transport attached in the meantime.
            let still_detached = |s: &Session| {
                let st = s.lock();
                st.attached_gen().is_none() && st.attach_gen_is(gen) && !st.ended
            };
            tokio::time::sleep(grace.min(window)).await;
            let Some(h) = hub.upgrade() else { return };
            if !still_detached(&session) {
                return; // resumed (a later detach has its own timer) or ended
            }
            h.leave_presence_all(&session, true).await;
            drop(h);
            tokio::time::sleep(window.saturating_sub(grace)).await;
            let Some(h) = hub.upgrade() else { return };
            if still_detached(&session) {
                h.end_session(&session, CloseCode::SESSION_EXPIRED).await;
            }
        });
    }

    /// Ends a session for good: presence leaves at once, subscriptions go, the resume token
    /// stops working.
    pub async fn end_session(self: &Arc<Self>, session: &Arc<Session>, code: CloseCode) {
        let retired = {
            let mut sessions = self.sessions.lock();
            self.retire(&mut sessions, session, code)
        };
        if retired {
            self.finish_ending(session, code).await;
        }
    }

    /// The asynchronous half of ending a session: its transport is closed, presence left,
    /// subscriptions dropped.
    async fn finish_ending(self: &Arc<Self>, session: &Arc<Session>, code: CloseCode) {
        tracing::debug!(session = %session.id, code = code.0, "session ended");
        session.close_transport(code, "session ended");
        self.leave_presence_all(session, false).await;
        let rooms: Vec<String> = session.lock().rooms.drain().map(|(r, _)| r).collect();
        for room in rooms {
            self.remove_local_sub(&room, session).await;
        }
    }

    pub async fn end_sessions_of(self: &Arc<Self>, user: &str, code: CloseCode) -> usize {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .by_id
            .values()
            .filter(|s| s.claims.sub == user)
            .cloned()
            .collect();
        for session in &sessions {
            self.end_session(session, code).await;
        }
        sessions.len()
    }
}
