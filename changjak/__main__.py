from changjak.cli import main

raise SystemExit(main())
