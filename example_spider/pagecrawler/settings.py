"""Settings of the example project: scrapy-pharox enabled, every option shown."""

BOT_NAME = "pagecrawler"
SPIDER_MODULES = ["pagecrawler.spiders"]
NEWSPIDER_MODULE = "pagecrawler.spiders"

# Where the spider starts; run_offline.py points it at the local playground site.
START_URLS = ["http://127.0.0.1:8000/"]

ROBOTSTXT_OBEY = False
CONCURRENT_REQUESTS = 8
DOWNLOAD_TIMEOUT = 10
RETRY_TIMES = 3
LOG_LEVEL = "INFO"
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False
FEED_EXPORT_ENCODING = "utf-8"

# One line enables scrapy-pharox: the proxy middleware at 740, the stats at 500.
ADDONS = {"scrapy_pharox.Addon": 300}
# ... or, the same by hand:
# DOWNLOADER_MIDDLEWARES = {"scrapy_pharox.PharoxProxyMiddleware": 740}
# EXTENSIONS = {"scrapy_pharox.PharoxStatsExtension": 500}

# Where the pool lives: "memory://" (this process only), a shared PostgreSQL
# "postgresql+psycopg://user:password@db-host:5432/proxies" or a local SQLite file
# "sqlite:///proxies.db".
# PHAROX_STORAGE_URL = "memory://"
# PHAROX_POOL = "default"

# Proxies added to PHAROX_POOL at start (idempotent), as URLs or in a file with one
# URL a line, optionally followed by fields: "http://u:p@10.0.0.5:3128 country=DE".
# PHAROX_PROXIES = ["http://user:password@10.0.0.5:3128"]
# PHAROX_PROXIES_FILE = "proxies.txt"
# PHAROX_PROXY_MAX_CONCURRENCY = 1   # requests at once per proxy; 0 = no limit

# PHAROX_CONSUMER = "pagecrawler:pages"   # who holds the leases
# PHAROX_LEASE_SECONDS = 300              # a lease expires if its holder dies
# PHAROX_SELECTOR = "round_robin"         # or "first_available", "least_used"
# PHAROX_FILTERS = {"country": "DE"}      # ProxyFilters fields, for every request
# PHAROX_ACQUIRE_TIMEOUT = 60             # seconds to wait for a free proxy
# PHAROX_STATS_INTERVAL = 60              # seconds between pharox log lines
# PHAROX_PROTOCOLS = ["http", "https"]    # proxies the download handler can use

# Sharing proxies over time (the README's "Sharing a pool over time").
# PHAROX_REUSE_DELAY = 0          # seconds between two requests of one IP to one host
# PHAROX_DOWNLOAD_SLOT = "domain" # or "proxy": Scrapy's slots per (host, proxy)
