#!/usr/bin/env bash
# Install Postfix and Dovecot from Debian and run private instances of them for the
# side-by-side benchmarks (bench/smtp_compare.py, bench/imap_compare.py).
#
# The machine is shared with test suites that bind 127.0.0.x:25, 143 and 993 at any time, so
# the packaged services must never run on the standard ports: the packages are installed with
# service starts blocked (policy-rc.d), the system instances are stopped and disabled, and our
# own instances run from private config dirs under /tmp, on 127.0.0.1 and high ports only.
#
#   bench/setup_peers.sh            install (if needed), write configs, (re)start both peers
#   bench/setup_peers.sh stop       stop the private instances
#   bench/setup_peers.sh status     show what runs where
#
# Idempotent: run it as often as you like. Needs root (apt-get, postfix, dovecot).
# Environment: BENCH_POSTFIX_PORT (default 12525), BENCH_DOVECOT_PORT (default 12143),
# BENCH_DOVECOT_IMAPS_PORT (default 12993, implicit TLS),
# BENCH_ROOT (default /tmp) -- configs go to $BENCH_ROOT/bench-postfix and bench-dovecot.
# Both peers accept mail/logins for the domain bench.test; the user is bench@bench.test with
# password "bench-secret" (Dovecot; also mixed@bench.test for the mixed IMAP load); mail lands in
# Maildirs under the private dirs.
set -euo pipefail

POSTFIX_PORT=${BENCH_POSTFIX_PORT:-12525}
DOVECOT_PORT=${BENCH_DOVECOT_PORT:-12143}
DOVECOT_IMAPS_PORT=${BENCH_DOVECOT_IMAPS_PORT:-12993}
ROOT=${BENCH_ROOT:-/tmp}
PF=$ROOT/bench-postfix
DC=$ROOT/bench-dovecot
DOMAIN=bench.test
MAIL_USER=bench
# Mail for both peers is owned by this unprivileged account (created below if missing).
VMAIL=benchmail

log() { printf 'setup_peers: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, postfix and dovecot need it)"

port_in_use() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

# --- install ------------------------------------------------------------------------------

install_packages() {
    local wanted=(postfix dovecot-core dovecot-imapd)
    local missing=()
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    # imaptest is not packaged for Debian 12; take it if this release has it.
    if ! command -v imaptest >/dev/null; then
        for pkg in imaptest dovecot-imaptest; do
            if apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
                missing+=("$pkg")
                break
            fi
        done
    fi
    [ ${#missing[@]} -eq 0 ] && { log "packages present"; return; }

    log "installing ${missing[*]}"
    # "No configuration": postfix's postinst writes no main.cf and starts nothing useful.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string localhost" | debconf-set-selections
    # Block service starts during the install (Debian's policy-rc.d protocol: exit 101).
    # If the machine already has a policy-rc.d (containers usually do) it is left alone.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    trap '[ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d' RETURN
    if ! apt-cache policy postfix | grep -q 'Candidate: [0-9]'; then
        apt-get update -q
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >&2
}

# Stop and disable the packaged (system-wide) instances, whatever init system there is.
quiet_system_services() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl disable --now postfix.service dovecot.service dovecot.socket >/dev/null 2>&1 || true
    else
        service postfix stop >/dev/null 2>&1 || true
        service dovecot stop >/dev/null 2>&1 || true
        update-rc.d postfix disable >/dev/null 2>&1 || true
        update-rc.d dovecot disable >/dev/null 2>&1 || true
    fi
    if [ -f /etc/postfix/main.cf ]; then postfix stop >/dev/null 2>&1 || true; fi
    # Anything left over from the system config. A private instance (ours, or another
    # BENCH_ROOT's: several people may bench on one machine at once) has a bench-dovecot /
    # bench-postfix dir in its argv or MAIL_CONFIG and is left alone.
    local pid
    for pid in $(pgrep -x dovecot || true); do
        grep -qa "/bench-dovecot/" "/proc/$pid/cmdline" || { log "killing system dovecot $pid"; kill "$pid" || true; }
    done
    for pid in $(pgrep -f '/usr/lib/postfix/sbin/master' || true); do
        # A private one is told apart by the MAIL_CONFIG that `postfix -c` passes to master.
        tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -q "^MAIL_CONFIG=.*/bench-postfix\$" \
            || { log "killing system postfix master $pid"; kill "$pid" || true; }
    done
}

ensure_vmail_user() {
    if ! getent passwd "$VMAIL" >/dev/null; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$VMAIL"
    fi
}

# --- Postfix ------------------------------------------------------------------------------

write_postfix_config() {
    local uid gid
    uid=$(id -u "$VMAIL")
    gid=$(id -g "$VMAIL")
    mkdir -p "$PF" "$PF/mail" "$PF/queue" "$PF/data"
    chown "$VMAIL:$VMAIL" "$PF/mail"
    chown postfix "$PF/data"
    cat >"$PF/main.cf" <<EOF
# Private benchmark instance (bench/setup_peers.sh). Loopback only, high port, no relay.
compatibility_level = 3.6
config_directory = $PF
queue_directory = $PF/queue
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.local
mydomain = bench.local
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = reject_unauth_destination
smtpd_banner = \$myhostname ESMTP
message_size_limit = 52428800
virtual_mailbox_limit = 0
# Virtual mailboxes: one Maildir per address (a trailing / in the map means Maildir).
virtual_mailbox_domains = $DOMAIN
virtual_mailbox_base = $PF/mail
virtual_mailbox_maps = texthash:$PF/vmailbox
virtual_uid_maps = static:$uid
virtual_gid_maps = static:$gid
virtual_minimum_uid = 100
# No syslog in a container: Postfix's own log file (postlogd), counted with the rest.
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
alias_maps =
alias_database =
biff = no
# The benchmark offers 20 concurrent sessions; the defaults (100 processes) cover that.
default_process_limit = 100
EOF
    printf '%s@%s %s/%s/Maildir/\n' "$MAIL_USER" "$DOMAIN" "$DOMAIN" "$MAIL_USER" >"$PF/vmailbox"
    # master.cf: only what delivery needs, nothing chrooted (a chroot would need copies of
    # /etc files under the queue dir), smtpd on our private port.
    cat >"$PF/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}

start_postfix() {
    if postfix -c "$PF" status >/dev/null 2>&1; then
        log "postfix (private) already running; reloading config"
        postfix -c "$PF" reload >/dev/null 2>&1 || true
        return
    fi
    port_in_use "$POSTFIX_PORT" && die "port $POSTFIX_PORT is taken; set BENCH_POSTFIX_PORT"
    # Postfix reports fatal errors to a tty or the log only: show the log on failure.
    postfix -c "$PF" set-permissions >/dev/null 2>&1 || true
    # Daemons must not inherit our stdout/stderr (a caller's pipe would never close).
    if ! postfix -c "$PF" check || ! postfix -c "$PF" start </dev/null >>"$PF/start.log" 2>&1; then
        tail -5 "$PF/start.log" "$PF/maillog" >&2 2>/dev/null || true
        die "postfix would not start (try: script -qc 'postfix -c $PF check' /dev/null)"
    fi
    log "postfix listening on 127.0.0.1:$POSTFIX_PORT (config $PF, Maildir $PF/mail/$DOMAIN/$MAIL_USER/Maildir)"
}

# --- Dovecot ------------------------------------------------------------------------------

write_dovecot_config() {
    local uid gid
    uid=$(id -u "$VMAIL")
    gid=$(id -g "$VMAIL")
    mkdir -p "$DC/run" "$DC/home"
    chown "$VMAIL:$VMAIL" "$DC/home"
    # {PLAIN} keeps the password check out of the figures (Pillarbox uses argon2id, paid
    # once per login; the benchmarks log in once per connection, outside the timed parts).
    {
        printf '%s@%s:{PLAIN}bench-secret::::::\n' "$MAIL_USER" "$DOMAIN"
        printf 'mixed@%s:{PLAIN}bench-secret::::::\n' "$DOMAIN"
    } >"$DC/users"
    # STARTTLS like Pillarbox offers it (the benchmarks use it on both when Pillarbox
    # requires it before LOGIN); plaintext LOGIN stays allowed for the plain runs.
    if [ ! -s "$DC/key.pem" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dovecot.bench.local" \
            -keyout "$DC/key.pem" -out "$DC/cert.pem" >/dev/null 2>&1
        chmod 600 "$DC/key.pem"
    fi
    chmod 640 "$DC/users"
    chown root:dovecot "$DC/users"
    cat >"$DC/dovecot.conf" <<EOF
# Private benchmark instance (bench/setup_peers.sh). Loopback only, high port.
base_dir = $DC/run
instance_name = bench-dovecot
protocols = imap
listen = 127.0.0.1
log_path = $DC/dovecot.log
info_log_path = $DC/dovecot.log
ssl = yes
ssl_cert = <$DC/cert.pem
ssl_key = <$DC/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
mail_uid = $uid
mail_gid = $gid
first_valid_uid = 100
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $DC/users
}
userdb {
  driver = static
  args = uid=$uid gid=$gid home=$DC/home/%d/%n
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $DOVECOT_PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $DOVECOT_IMAPS_PORT
  }
  process_limit = 2000
}
service imap {
  process_limit = 2000
}
service auth {
  unix_listener auth-userdb {
    mode = 0666
  }
}
default_client_limit = 4000
protocol imap {
  # Default is 10 per user and IP; the idle-connection test opens hundreds.
  mail_max_userip_connections = 2000
}
EOF
}

start_dovecot() {
    local pidfile=$DC/run/master.pid
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        log "dovecot (private) already running; reloading config"
        doveadm -c "$DC/dovecot.conf" reload >/dev/null 2>&1 || kill -HUP "$(cat "$pidfile")"
        return
    fi
    port_in_use "$DOVECOT_PORT" && die "port $DOVECOT_PORT is taken; set BENCH_DOVECOT_PORT"
    if ! dovecot -c "$DC/dovecot.conf" </dev/null >>"$DC/start.log" 2>&1; then
        tail -5 "$DC/start.log" "$DC/dovecot.log" >&2 2>/dev/null || true
        die "dovecot would not start"
    fi
    log "dovecot listening on 127.0.0.1:$DOVECOT_PORT and imaps :$DOVECOT_IMAPS_PORT (config $DC/dovecot.conf, home $DC/home/$DOMAIN/$MAIL_USER)"
}

stop_peers() {
    postfix -c "$PF" stop >/dev/null 2>&1 || true
    if [ -f "$DC/run/master.pid" ]; then
        local pid i
        pid=$(cat "$DC/run/master.pid")
        kill "$pid" 2>/dev/null || true
        # Wait for it to release its port, so an immediate start can bind again.
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    log "stopped private postfix and dovecot"
}

status() {
    postfix -c "$PF" status 2>&1 || true
    if [ -f "$DC/run/master.pid" ] && kill -0 "$(cat "$DC/run/master.pid")" 2>/dev/null; then
        log "dovecot running, pid $(cat "$DC/run/master.pid")"
    else
        log "dovecot not running"
    fi
    ss -Htlnp "( sport = :$POSTFIX_PORT or sport = :$DOVECOT_PORT )" || true
}

case "${1:-start}" in
    start)
        install_packages
        quiet_system_services
        ensure_vmail_user
        write_postfix_config
        write_dovecot_config
        start_postfix
        start_dovecot
        ;;
    stop) stop_peers ;;
    status) status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
