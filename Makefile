# Mailkeep — two commands: `make run` starts a local server, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian packages the test suite talks to (real peers, never mocks).
APT_PACKAGES := postfix swaks ca-certificates openssl libnet-ssleay-perl libio-socket-ssl-perl \
                libauthen-sasl-perl procps dovecot-imapd dovecot-pop3d isync offlineimap3 \
                fetchmail mutt opendkim-tools nsd unbound ldnsutils bind9-dnsutils sasl2-bin \
                libsasl2-modules clamav-daemon rspamd curl libplist-utils pebble

.PHONY: run test venv apt-deps lint lock clean

run: $(BIN)/.installed
	$(BIN)/mailkeep localserve $(ARGS)

test: apt-deps $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest $(PYTEST_ARGS)

venv: $(BIN)/.installed

$(BIN)/.installed: requirements.lock pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

# Installs only what is missing, so a prepared machine pays nothing.
apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  case "$$missing" in *dovecot*) \
	    command -v systemctl >/dev/null && systemctl disable --now dovecot.service dovecot.socket 2>/dev/null || true;; \
	  esac; \
	  for s in nsd unbound clamav-daemon clamav-freshclam rspamd; do \
	    command -v systemctl >/dev/null && systemctl disable --now $$s.service 2>/dev/null || true; \
	  done; \
	  for p in nsd unbound clamd freshclam rspamd; do pkill -x $$p 2>/dev/null || true; done; \
	fi

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

# Re-resolve pinned versions (with hashes) after editing requirements.in.
lock: $(BIN)/.installed
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile -q --generate-hashes --strip-extras -o requirements.lock requirements.in
	sed -i '/^--extra-index-url/d;/^--find-links/d;/^--index-url/d' requirements.lock

clean:
	rm -rf $(VENV) localserve .pytest_cache .ruff_cache
