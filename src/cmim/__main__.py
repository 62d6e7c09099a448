from cmim.cli import main

raise SystemExit(main())
