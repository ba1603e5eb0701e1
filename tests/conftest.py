def pytest_configure(config):
    # Opt-in tests that need minutes (e.g. the real FID network on 2,000
    # images); run them with SPIKEDIFF_SLOW=1.
    config.addinivalue_line("markers", "slow: minutes-long check, skipped unless SPIKEDIFF_SLOW=1")
