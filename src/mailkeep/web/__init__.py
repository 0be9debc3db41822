"""What Mailkeep serves over HTTP(S): ACME challenges, the MTA-STS policy, client
autoconfiguration and metrics (docs/http.md)."""
