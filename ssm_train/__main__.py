from ssm_train.cli import main

raise SystemExit(main())
