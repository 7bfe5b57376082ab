from harness.frontends.cli import main

raise SystemExit(main())
