from model_code.cli import main

raise SystemExit(main())
